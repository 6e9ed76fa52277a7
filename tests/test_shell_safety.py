"""No value from data, flags, presets or plan.yaml reaches a shell as syntax.

Text fields of plan.yaml that hold shell syntax or a line break are refused by `llmwizard run`
(exit 2, the key named, the run directory unchanged). Paths, which may hold anything but a line
break, are accepted: the exported launch.sh and slurm.sbatch then RUN with every path and value
full of shell metacharacters, and no injected command may run. The interpreter is a recording
script (LLMWIZARD_PYTHON) and Slurm's commands are stand-ins on PATH: the shell layer is what is
under test, so nothing trains.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmwizard.autotune.embedded import DATASET_PATH, ensure_embedded_model
from llmwizard.autotune.plan import Plan
from llmwizard.runner.export import export, launch_script
from llmwizard.runner.export.scripts import IP, IS_HOST, PORT, RANK, launch_command
from tests.conftest import run_cli
from tests.refusals import assert_refused, snapshot

MARKER = "INJECTED"
# Every kind of shell syntax a value could smuggle in: substitutions, a second command, quotes that
# would close a quoted word, a backslash and spaces.
HOSTILE = f"a b $(touch {MARKER}) `touch {MARKER}` ; touch {MARKER} ' \" \\ & | > x"
# Extra arguments of `bash launch.sh ...` reach the training entry as they are.
EXTRA = ["--output_dir", f"o $(touch {MARKER})", f"`touch {MARKER}`;'\""]
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def _injected(root: Path) -> list[Path]:
    """Files an injected `touch` would have made (relative to whatever directory it ran in)."""
    return list(root.rglob(f"{MARKER}*"))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model directory, a dataset file and a recording interpreter, each under a hostile path."""
    root = tmp_path_factory.mktemp("shell")
    model = root / f"model {HOSTILE}"
    shutil.copytree(ensure_embedded_model(), model)
    dataset = root / f"data {HOSTILE}" / "arith metic;x.jsonl"
    dataset.parent.mkdir()
    shutil.copy(DATASET_PATH, dataset)
    recorder = root / f"python {HOSTILE}" / "py"
    recorder.parent.mkdir()
    # What the launcher would have been started with: its arguments, directory and environment.
    recorder.write_text(f"#!{sys.executable}\n"
                        "import json, os, sys\n"
                        "keys = ('MACHINE_RANK', 'MAIN_PROCESS_IP', 'MAIN_PROCESS_PORT',\n"
                        "        'FSDP_TRANSFORMER_CLS_TO_WRAP')\n"
                        "with open(os.environ['RECORD'], 'a', encoding='utf-8') as out:\n"
                        "    out.write(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(),\n"
                        "                          'env': {k: os.environ.get(k) for k in keys}}) + '\\n')\n")
    recorder.chmod(0o755)
    fake_bin = root / "bin"
    fake_bin.mkdir()
    # Slurm's srun runs its command on each machine (here: one, node 0); scontrol names the nodes and
    # the job's script, as `scontrol show job` prints it.
    (fake_bin / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                                   'SLURM_NODEID=0 exec "$@"\n')
    (fake_bin / "scontrol").write_text(
        '#!/usr/bin/env bash\n'
        'if [ "$2" = hostnames ]; then echo node-0.cluster; exit 0; fi\n'
        'printf "   UserId=me JobId=%s\\n   Command=%s\\n" "$SLURM_JOB_ID" "$FAKE_SBATCH"\n')
    for tool in fake_bin.iterdir():
        tool.chmod(0o755)
    return {"root": root, "model": model, "dataset": dataset, "recorder": recorder, "bin": fake_bin}


def _clean_env(hostile: dict[str, Path], record: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MACHINE_RANK", "MAIN_PROCESS_IP", "MAIN_PROCESS_PORT", "LLMWIZARD_PYTHON")
           and not k.startswith("SLURM_")}
    return {**env, "RECORD": str(record), "LLMWIZARD_PYTHON": str(hostile["recorder"]), **extra}


def _records(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]


def _expected_argv(plan: Plan, rank: str, ip: str, port: str) -> list[str]:
    """launch.sh's command for `plan` as the launcher receives it, with the per-machine values."""
    argv, _ = launch_command(plan)
    live = {RANK: rank, IP: ip, PORT: port, IS_HOST: f"is_host={int(rank == '0')}", f"{IP}:{PORT}": f"{ip}:{port}"}
    return [live.get(word, word) for word in argv[1:]]


def _printed_commands(stdout: str) -> list[list[str]]:
    """The commands `llmwizard export` prints after "Run it with:", as a shell splits them."""
    text = stdout.split("Run it with: ", 1)[1]
    return [shlex.split(part) for part in text.split("   or   ")]


def _export(hostile: dict[str, Path], out: Path, *args: str) -> Plan:
    result = run_cli("export", "--model", str(hostile["model"]), "--dataset", str(hostile["dataset"]),
                     "--out", str(out), "--max-steps", "1", *args, cwd=hostile["root"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert _printed_commands(result.stdout) == [["bash", str(out / "launch.sh")], ["llmwizard", "run", str(out)]]
    plan = Plan.load(out / "plan.yaml")
    # Paths arrive whole in the plan and in TRL's config; the derived run name is safe.
    assert (plan.model, plan.dataset) == (str(hostile["model"]), str(hostile["dataset"]))
    sft = yaml.safe_load((out / "sft_config.yaml").read_text(encoding="utf-8"))
    assert (sft["model_name_or_path"], sft["dataset_name"]) == (plan.model, plan.dataset)
    assert SAFE_NAME.fullmatch(plan.name), plan.name
    return plan


def test_llmwizard_run_launches_a_hostile_run_directory_intact(hostile, tmp_path):
    """`llmwizard run DIR` exports launch.sh again from plan.yaml and runs it: the run directory
    (a line break in its name too), the model and dataset paths and the interpreter's path hold
    shell syntax, and each arrives as it is."""
    out = hostile["root"] / f"out {HOSTILE}\nsecond line"
    plan = _export(hostile, out)
    record = tmp_path / "record.jsonl"
    result = run_cli("run", str(out), cwd=hostile["root"], env=_clean_env(hostile, record))
    assert result.returncode == 0, result.stdout + result.stderr
    [call] = _records(record)
    assert call["cwd"] == str(out)
    port = call["env"]["MAIN_PROCESS_PORT"]   # the session's free port
    assert call["argv"] == _expected_argv(plan, "0", plan.main_process_ip, port)
    # `bash launch.sh ARGS` from another directory: the arguments reach the entry as they are.
    subprocess.run(["bash", str(out / "launch.sh"), *EXTRA], cwd=tmp_path, check=True,
                   env=_clean_env(hostile, record))
    assert _records(record)[-1]["argv"] == _expected_argv(plan, "0", plan.main_process_ip, "29500") + EXTRA
    assert _injected(hostile["root"]) == [] and _injected(tmp_path) == []


def test_the_exporting_interpreter_path_is_quoted(hostile, tmp_path):
    """Without LLMWIZARD_PYTHON, launch.sh starts the interpreter that exported it, by its path."""
    out = hostile["root"] / f"interpreter {HOSTILE}"
    plan = _export(hostile, out)
    (out / "launch.sh").write_text(launch_script(plan, python=str(hostile["recorder"])))
    record = tmp_path / "record.jsonl"
    env = _clean_env(hostile, record)
    del env["LLMWIZARD_PYTHON"]
    subprocess.run(["bash", str(out / "launch.sh")], cwd=tmp_path, check=True, env=env)
    assert _records(record)[0]["argv"] == _expected_argv(plan, "0", plan.main_process_ip, "29500")
    assert _injected(hostile["root"]) == [] and _injected(tmp_path) == []


MULTI_NODE = {
    "accelerate": ["--strategy", "ddp"],
    "torchrun": ["--strategy", "fsdp", "--launcher", "torchrun"],
    "deepspeed": ["--strategy", "zero2", "--launcher", "deepspeed"],
}


@pytest.mark.parametrize("launcher", MULTI_NODE)
def test_two_machine_launch_and_slurm_scripts_run_hostile_paths_intact(hostile, tmp_path, launcher):
    """Two machines: launch.sh with a rank, machine 0's address and the plan's own default address,
    and slurm.sbatch under stand-in srun/scontrol (the run directory found through Command=)."""
    out = hostile["root"] / f"{launcher} {HOSTILE}"
    _export(hostile, out, "--gpus", "1xH100-80GB", "--nodes", "2", *MULTI_NODE[launcher])
    # A host name in plan.yaml: the default launch.sh uses when MAIN_PROCESS_IP is unset.
    data = yaml.safe_load((out / "plan.yaml").read_text(encoding="utf-8"))
    data["main_process_ip"] = "node-7.cluster.example"
    (out / "plan.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    plan = Plan.load(out / "plan.yaml")
    export(plan, out, edits="discard")
    record = tmp_path / "record.jsonl"

    subprocess.run(["bash", str(out / "launch.sh"), *EXTRA], cwd=tmp_path, check=True,
                   env=_clean_env(hostile, record, MACHINE_RANK="1"))
    [call] = _records(record)
    assert call["argv"] == _expected_argv(plan, "1", "node-7.cluster.example", "29500") + EXTRA
    assert call["cwd"] == str(out)
    if plan.strategy == "fsdp" and launcher == "torchrun":
        assert call["env"]["FSDP_TRANSFORMER_CLS_TO_WRAP"] == plan.layer_cls
        assert ["--rdzv_id", plan.name] == call["argv"][call["argv"].index("--rdzv_id"):][:2]

    # A rank that is not a number never reaches the shell's arithmetic.
    refused = subprocess.run(["bash", str(out / "launch.sh")], cwd=tmp_path, capture_output=True, text=True,
                             check=False, env=_clean_env(hostile, record, MACHINE_RANK=f"a[$(touch {MARKER})]"))
    assert refused.returncode == 2 and "MACHINE_RANK must be a number" in refused.stderr
    assert len(_records(record)) == 1

    # slurm.sbatch as Slurm runs it: a copy elsewhere, the run directory from scontrol's Command=.
    sbatch_copy = tmp_path / "slurm-copy.sbatch"
    shutil.copy(out / "slurm.sbatch", sbatch_copy)
    env = _clean_env(hostile, record, SLURM_JOB_ID="17", SLURM_JOB_NODELIST="node-[0-1]",
                     FAKE_SBATCH=str(out / "slurm.sbatch"), PATH=f"{hostile['bin']}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(["bash", str(sbatch_copy)], cwd=tmp_path, check=True, env=env)
    slurm_call = _records(record)[-1]
    assert slurm_call["cwd"] == str(out)
    assert slurm_call["env"]["MAIN_PROCESS_IP"] == "node-0.cluster"
    assert slurm_call["argv"] == _expected_argv(plan, "0", "node-0.cluster", "29500")
    assert f"#SBATCH --job-name={plan.name}\n" in (out / "slurm.sbatch").read_text(encoding="utf-8")
    assert _injected(hostile["root"]) == [] and _injected(tmp_path) == []


def test_values_that_skipped_the_schema_are_still_quoted(hostile, tmp_path):
    """The exporters do not rely on the schema: a Plan changed after validation (as code could)
    with shell syntax and line breaks in every text field still gives scripts that run no
    injected command and pass each value on as one argument."""
    from llmwizard.runner.export.scripts import slurm_script

    out = hostile["root"] / f"unchecked {HOSTILE}"
    plan = _export(hostile, out, "--gpus", "1xH100-80GB", "--nodes", "2", *MULTI_NODE["torchrun"])
    evil = f"x\ntouch {MARKER}\n{HOSTILE}"
    for key in ("name", "hardware", "model", "dataset", "main_process_ip", "layer_cls"):
        setattr(plan, key, f"{key} {evil}")   # pydantic checks on construction, not on assignment
    (out / "launch.sh").write_text(launch_script(plan), encoding="utf-8")
    (out / "slurm.sbatch").write_text(slurm_script(plan), encoding="utf-8")
    record = tmp_path / "record.jsonl"
    subprocess.run(["bash", str(out / "launch.sh")], cwd=tmp_path, check=True, env=_clean_env(hostile, record))
    [call] = _records(record)
    assert call["argv"] == _expected_argv(plan, "0", plan.main_process_ip, "29500")
    assert call["env"]["FSDP_TRANSFORMER_CLS_TO_WRAP"] == plan.layer_cls
    env = _clean_env(hostile, record, SLURM_JOB_ID="17", SLURM_JOB_NODELIST="n", SLURM_SUBMIT_DIR=str(out),
                     PATH=f"{hostile['bin']}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(["bash", str(out / "slurm.sbatch")], cwd=tmp_path, check=True, env=env)
    assert _records(record)[-1]["argv"] == _expected_argv(plan, "0", "node-0.cluster", "29500")
    assert _injected(hostile["root"]) == [] and _injected(tmp_path) == []


@pytest.mark.parametrize("flag", ["--model", "--dataset"])
def test_a_path_with_a_line_break_is_refused_naming_it(hostile, tmp_path, flag):
    """A model directory or dataset file whose path holds a line break cannot be a one-line plan
    value: the planner's Plan refuses it (exit 2, the key named) and nothing is written."""
    source = hostile["model"] if flag == "--model" else hostile["dataset"]
    target = tmp_path / f"line\nbreak{source.suffix}"
    (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    out = tmp_path / "run"
    result = run_cli("export", flag, str(target), "--out", str(out), cwd=tmp_path)
    assert_refused(result, [f"{flag[2:]} = ", "one line of printable characters"])
    assert not out.exists()


# ----------------------------------------------------------------------------- refused text fields

@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run directory (LoRA on the CPU), exported by the command."""
    out = tmp_path_factory.mktemp("export") / "run"
    result = run_cli("export", "--out", str(out), "--max-steps", "1", "--method", "lora")
    assert result.returncode == 0, result.stderr
    return out


INJECTION = f"$(touch {MARKER})"
# (plan.yaml change by dotted key, words the message must hold: the key, the value, what is allowed)
BAD_TEXT = [
    ({"name": f"run\ntouch {MARKER}"}, ["name", "letters, digits"]),
    ({"name": INJECTION}, ["name", INJECTION, "letters, digits"]),
    ({"name": "run;reboot"}, ["name", "run;reboot", "letters, digits"]),
    ({"name": "my run"}, ["name", "'my run'", "letters, digits"]),
    ({"name": "-rf"}, ["name", "'-rf'", "not starting with '-'"]),
    ({"name": ".."}, ["name", "'..'", "letters, digits"]),
    ({"name": "x" * 129}, ["name", "1 to 128"]),
    ({"hardware": f"CPU\ntouch {MARKER}"}, ["hardware", "one line of printable characters"]),
    ({"hardware": "CPU\rx"}, ["hardware", "one line of printable characters"]),
    ({"model": f"embedded:tiny-llama\n{INJECTION}"}, ["model", "one line of printable characters"]),
    ({"dataset": "data.jsonl\n; reboot"}, ["dataset", "one line of printable characters"]),
    ({"dataset": ""}, ["dataset", "one line of printable characters"]),
    ({"main_process_ip": INJECTION}, ["main_process_ip", INJECTION, "host name", "IPv4/IPv6"]),
    ({"main_process_ip": "`id`"}, ["main_process_ip", "`id`", "IPv4/IPv6"]),
    ({"main_process_ip": "10.0.0.1;reboot"}, ["main_process_ip", "10.0.0.1;reboot", "IPv4/IPv6"]),
    ({"main_process_ip": "10.0.0.999"}, ["main_process_ip", "10.0.0.999", "IPv4/IPv6"]),
    ({"main_process_ip": "node 0"}, ["main_process_ip", "'node 0'", "IPv4/IPv6"]),
    ({"main_process_ip": "-node"}, ["main_process_ip", "'-node'", "IPv4/IPv6"]),
    ({"layer_cls": "LlamaDecoderLayer;reboot"}, ["layer_cls", "LlamaDecoderLayer;reboot", "comma-separated"]),
    ({"layer_cls": f"LlamaDecoderLayer,{INJECTION}"}, ["layer_cls", "comma-separated Python class names"]),
    ({"layer_cls": "Llama DecoderLayer"}, ["layer_cls", "comma-separated Python class names"]),
    ({"layer_cls": "LlamaDecoderLayer,"}, ["layer_cls", "comma-separated Python class names"]),
    ({"lora.target_modules": ["q_proj", INJECTION]}, ["lora.target_modules", INJECTION, "module names"]),
    ({"lora.target_modules": ["q_proj\nv_proj"]}, ["lora.target_modules", "module names"]),
    ({"lora.target_modules": []}, ["lora.target_modules", "[]", "module names"]),
    ({"lora.peft_targets": ["q_proj", "v proj"]}, ["lora.peft_targets", "v proj", "one regular expression"]),
    ({"lora.peft_targets": [".*(q_proj"]}, ["lora.peft_targets", ".*(q_proj", "compiles"]),
    ({"lora.peft_targets": [".*q_proj\n.*v_proj"]}, ["lora.peft_targets", "one regular expression"]),
    # Printed as two processes, launched as one.
    ({"num_processes": 2, "effective_batch": 32}, ["strategy single runs one process on one machine",
                                                   "num_processes is 2", "ddp, fsdp, zero2 or zero3"]),
    ({"num_processes": 2, "num_machines": 2, "effective_batch": 32},
     ["strategy single", "num_processes is 2 and num_machines 2"]),
    # The --eval-fraction flag's rule: most rows train.
    ({"eval_fraction": 0.9}, ["eval_fraction", "0.9", "0.5"]),
    ({"eval_fraction": 0.5}, ["eval_fraction", "0.5", "under 0.5"]),
]


def _changed(data: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    for key, value in change.items():
        *parents, last = key.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        target[last] = value
    return data


@pytest.mark.parametrize("change, words", BAD_TEXT, ids=[repr(change)[:60] for change, _ in BAD_TEXT])
def test_bad_text_in_plan_yaml_is_refused_naming_it(change, words, exported, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(exported, run_dir)
    data = _changed(yaml.safe_load((run_dir / "plan.yaml").read_text(encoding="utf-8")), change)
    (run_dir / "plan.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    before = snapshot(run_dir)
    result = run_cli("run", str(run_dir), cwd=tmp_path)
    assert_refused(result, [*words, "plan.yaml"])
    assert snapshot(run_dir) == before, "a refused plan.yaml must leave the run directory as it was"
    assert _injected(tmp_path) == []


@pytest.mark.parametrize("address", ["10.0.0.1", "node-0", "node-0.cluster.example", "fe80::1", "::1"])
def test_host_names_and_addresses_are_accepted(address, exported, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(exported, run_dir)
    data = yaml.safe_load((run_dir / "plan.yaml").read_text(encoding="utf-8"))
    data["main_process_ip"] = address
    (run_dir / "plan.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    assert Plan.load(run_dir / "plan.yaml").main_process_ip == address
