"""launch.sh as a user runs it: from any directory, from a copied run directory, on two
"machines" over loopback, under a Slurm allocation, and failing readably on bad data.

Real launchers and real training on CPU (gloo). The only stand-ins are `srun` and `scontrol`
in the Slurm test: there is no Slurm here, so two small scripts play the allocation (two
nodes, each told its own SLURM_NODEID), and the exported slurm.sbatch runs unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmwizard.runner.session.launch import free_port
from llmwizard.runner.metrics import read_metrics
from tests.tiny_models import launch_until_first_loss, losses, make_plan, run_group, run_launch_sh, strategy_ran

slow = pytest.mark.slow


@slow
def test_a_copied_run_directory_reruns_from_anywhere(tmp_path: Path):
    from llmwizard.runner.export import export

    original = tmp_path / "original"
    export(make_plan(strategy="single", processes=1, max_steps=3), original)
    copy = tmp_path / "somewhere" / "else" / "run copy"  # a space: every path must be quoted
    shutil.copytree(original, copy)
    shutil.rmtree(original)  # nothing may point back at where it was exported

    result = run_launch_sh(copy, tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert strategy_ran(result.stdout) == ("single", 1)
    assert len(losses(copy)) == 3
    assert (copy / "output" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["somewhere"]


@slow
def test_two_machines_on_loopback_form_one_world(tmp_path: Path):
    """Two `bash launch.sh` (MACHINE_RANK 0 and 1, one process each) rendezvous over c10d."""
    from llmwizard.runner.export import export

    plan = make_plan(strategy="ddp", processes=1, nodes=2, max_steps=6)
    assert (plan.num_machines, plan.num_processes) == (2, 2)
    run_dir = tmp_path / "run"
    export(plan, run_dir)
    port = str(free_port())
    machines = [_start(run_dir, tmp_path, {"MACHINE_RANK": str(rank), "MAIN_PROCESS_IP": "127.0.0.1",
                                           "MAIN_PROCESS_PORT": port}) for rank in (0, 1)]
    logs = [_finish(process) for process in machines]
    assert strategy_ran("".join(logs)) == ("ddp", 2)
    assert len(losses(run_dir)) == 6
    assert (run_dir / "output" / "adapter_model.safetensors").is_file()


@slow
def test_slurm_script_gives_each_node_its_own_rank(tmp_path: Path):
    """slurm.sbatch under a two-node stand-in allocation, with the deepspeed launcher: it takes
    --node_rank from $MACHINE_RANK, so an unescaped $SLURM_NODEID (rank 0 twice) would fail."""
    from llmwizard.runner.export import export

    plan = make_plan(strategy="zero2", launcher="deepspeed", processes=1, nodes=2, max_steps=4)
    run_dir = tmp_path / "run"
    export(plan, run_dir)
    assert (run_dir / "hostfile").read_text().splitlines() == ["node0 slots=1", "node1 slots=1"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _write_fake_slurm(bin_dir, run_dir)
    submit_dir = tmp_path / "submitted-from"  # not the run directory: the script must find it
    submit_dir.mkdir()
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="7",
               SLURM_JOB_NODELIST="node[0-1]", SLURM_SUBMIT_DIR=str(submit_dir),
               MAIN_PROCESS_PORT=str(free_port()))
    result = run_group(["bash", str(run_dir / "slurm.sbatch")], cwd=submit_dir, env=env, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "node_rank=0" in log and "node_rank=1" in log
    assert strategy_ran(log) == ("zero2", 2)
    assert len(losses(run_dir)) == 4


@slow
def test_a_dataset_without_usable_columns_ends_each_rank_readably(tmp_path: Path):
    from llmwizard.runner.export import export

    run_dir = tmp_path / "run"
    export(make_plan(strategy="ddp", max_steps=2), run_dir)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"question_text": f"q{i}", "label": i}) + "\n" for i in range(8)))
    config_path = run_dir / "sft_config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["dataset_name"] = str(bad)  # the data changed after the plan was made
    config_path.write_text(yaml.safe_dump(config))

    result = run_launch_sh(run_dir, tmp_path, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    for rank in (0, 1):
        assert (f"llmwizard (rank {rank}, Dataset) UserError: The dataset has no usable field: "
                "found columns ['label', 'question_text']") in log
    assert "Fix: Give each row one of" in log
    from llmwizard.runner.recovery import diagnose_failure

    failure = diagnose_failure(log, result.returncode)
    assert failure is not None and failure.kind == "dataset_column"
    assert "runner/rank/train.py" not in log, "a user mistake must not print a traceback from the entry"
    assert not [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "log"]


# ----------------------------------------------------------------------------- the entry's data loading
# In-process and fast: the same functions each rank calls, on every file type a plan accepts.

@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_the_entry_loads_every_local_file_type(tmp_path: Path, suffix: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmwizard.runner.rank.train import load_splits

    rows = [{"instruction": f"Add {i} and 1.", "input": "", "output": f"{i + 1}"} for i in range(10)]
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=1))  # a JSON array of rows
    elif suffix == ".csv":
        path.write_text("instruction,input,output\n" + "".join(f"{r['instruction']},,{r['output']}\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    script = _Args(dataset_name=str(path), dataset_config=None, dataset_train_split="train", dataset_test_split="test")
    train, test = load_splits(script, _Args(eval_strategy="steps", seed=0), eval_fraction=0.2)
    assert (len(train), len(test)) == (8, 2)
    first = train[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"] and first[0]["content"].startswith("Add ")


def test_hub_style_splits_are_mapped_or_named_in_the_error():
    import datasets

    from llmwizard.autotune.errors import UserError
    from llmwizard.runner.rank.train import _normalized

    sharegpt = datasets.Dataset.from_list([{"conversations": [{"from": "human", "value": "hi"},
                                                             {"from": "gpt", "value": "hello"}]}])
    assert _normalized(sharegpt, "hub/set")[0]["messages"][1] == {"role": "assistant", "content": "hello"}
    with pytest.raises(UserError, match=r"found columns \['id', 'label'\]"):
        _normalized(datasets.Dataset.from_list([{"id": 1, "label": "x"}]), "hub/set")
    broken = datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}, {"prompt": "", "completion": "c"}])
    with pytest.raises(UserError, match="hub/set: row 2 does not match the prompt_completion format"):
        _normalized(broken, "hub/set")


class _Args:
    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)


def _start(run_dir: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(["bash", str(run_dir / "launch.sh")], cwd=cwd, env=dict(os.environ, **env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _finish(process: subprocess.Popen[str]) -> str:
    try:
        out, _ = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    assert process.returncode == 0, out[-4000:]
    return out


def _write_fake_slurm(bin_dir: Path, run_dir: Path) -> None:
    """`srun ... bash -c CMD` runs CMD once per node with that node's SLURM_NODEID, as Slurm does;
    `scontrol` answers the two questions slurm.sbatch asks."""
    srun = bin_dir / "srun"
    srun.write_text(f"""#!{sys.executable}
import os, subprocess, sys
command = sys.argv[sys.argv.index("-c") + 1]
nodes = [subprocess.Popen(["bash", "-c", command], env=dict(os.environ, SLURM_NODEID=str(i), SLURM_PROCID=str(i)))
         for i in range(2)]
sys.exit(max(node.wait() for node in nodes))
""")
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"""#!/usr/bin/env bash
case "$1 $2" in
  "show hostnames") echo 127.0.0.1; echo 127.0.0.2 ;;
  "show job") echo "JobId=$3 JobName=run"; echo "   Command={run_dir / 'slurm.sbatch'}" ;;
esac
""")
    for path in (srun, scontrol):
        path.chmod(0o755)


def test_a_half_written_checkpoint_is_never_resumed_from(tmp_path):
    from llmwizard.runner.rank.train import last_checkpoint

    for step, complete in ((10, True), (20, True), (30, False)):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        if complete:
            (path / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-20")
    assert last_checkpoint(str(tmp_path / "missing")) is None


@slow
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_killing_a_launch_ends_ranks_outside_its_process_group(tmp_path: Path, launcher: str):
    """torch's elastic agent starts each worker in a session of its own, out of reach of the
    launch's process group: a kill must still end every rank, not orphan them mid-training."""
    import psutil

    from llmwizard.runner.export import export

    run_dir = tmp_path / "run"
    export(make_plan(strategy="ddp", launcher=launcher, max_steps=500), run_dir)
    launch, ranks = launch_until_first_loss(run_dir)
    try:
        assert len(ranks) == 2
        assert all(os.getsid(p.pid) != os.getsid(launch.process.pid) for p in ranks)
        launch.kill()
        _, alive = psutil.wait_procs(ranks, timeout=15)
        assert not alive, f"ranks outlived the kill: {[p.pid for p in alive]}"
    finally:
        if launch.poll() is None:
            launch.kill()
