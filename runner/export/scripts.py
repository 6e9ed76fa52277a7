"""The run's scripts: launch.sh (the exact launcher command), slurm.sbatch and README.txt.

launch.sh runs from any directory and any machine with llmwizard installed; rank-specific values
(MACHINE_RANK, MAIN_PROCESS_IP, MAIN_PROCESS_PORT) come from the environment, so one file serves
every machine of a multi-node run.

No value reaches the shell as syntax: every word is `shlex.quote`d except the expansions this
module writes itself (`Expansion`, built from constants only), and a plan value that serves as
a default is assigned on a line of its own, shell-quoted, and then only read from its variable
(`"${MAIN_PROCESS_IP:-$PLAN_MAIN_PROCESS_IP}"`), never spliced into a double-quoted word where
`$(...)` or a backtick would run. The Plan's schema restricts the same text fields besides.
"""

from __future__ import annotations

import shlex
import sys

from llmwizard.autotune.plan import Plan
from llmwizard.runner.export.configs import (HOSTFILE, METRICS_FILE, OUTPUT_DIR, fsdp_environment,
                                             parallelism_environment)
from llmwizard.runner.rundir import trl_config_name
from llmwizard.runner.runlock import TRAIN_MODULE


class Expansion(str):
    """A word the shell expands at run time (`"$PYTHON"`, `"${MACHINE_RANK:-0}"`): written in
    double quotes. Only this module makes them, from constant text; every other word is data."""


# launch.sh's variables for the plan's defaults of the per-machine values, each assigned on a line
# of its own, shell-quoted; the words read them only through these expansions.
PLAN_IP = "PLAN_MAIN_PROCESS_IP"
PLAN_PORT = "PLAN_MAIN_PROCESS_PORT"
RANK = Expansion("${MACHINE_RANK:-0}")
IP = Expansion("${MAIN_PROCESS_IP:-$" + PLAN_IP + "}")
PORT = Expansion("${MAIN_PROCESS_PORT:-$" + PLAN_PORT + "}")
# c10d decides which machine hosts the rendezvous store by matching the endpoint against its own
# addresses; machine 0 says so explicitly instead, so every other machine only connects (on one
# host, as in a loopback test, each would otherwise try to serve the port).
IS_HOST = Expansion("is_host=$(( ${MACHINE_RANK:-0} == 0 ))")


def train_arguments(plan: Plan) -> list[str]:
    """What follows the launcher: the per-rank entry and its options (every launch path takes these:
    launch.sh under each launcher, and through it slurm.sbatch, SkyPilot and Kubernetes; Ray's
    worker calls the entry with them). A task other than SFT names itself (`--task`), and GRPO its
    reward functions (`--reward`, one importable name each)."""
    args = ["-m", TRAIN_MODULE, "--config", trl_config_name(plan.task), "--metrics-file", METRICS_FILE]
    if plan.eval_fraction > 0:
        args += ["--eval-fraction", f"{plan.eval_fraction:g}"]
    if plan.task != "sft":
        args += ["--task", plan.task]
    if plan.task == "grpo" and plan.task_settings is not None:
        for name in plan.task_settings.rewards:
            args += ["--reward", name]
    return args


def launch_command(plan: Plan, python: str = Expansion("$PYTHON")) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) as launch.sh runs it. Per-machine values come from the
    environment at run time (MACHINE_RANK, MAIN_PROCESS_IP, MAIN_PROCESS_PORT), else from the
    plan through launch.sh's PLAN_MAIN_PROCESS_IP and PLAN_MAIN_PROCESS_PORT. Words that are
    `Expansion`s stay live; every other word is data."""
    multi_node = plan.num_machines > 1
    env: dict[str, str] = {}
    if plan.launcher == "accelerate":
        argv = [python, "-m", "accelerate.commands.launch", "--config_file", "accelerate_config.yaml",
                "--main_process_port", PORT]
        if multi_node:
            # --rdzv_backend on the command line: accelerate 1.15 ignores the YAML's value (its
            # CLI default "static" is never None, so _validate_launch_command keeps it).
            argv += ["--machine_rank", RANK, "--main_process_ip", IP, "--rdzv_backend", "c10d",
                     "--rdzv_conf", IS_HOST]
        return argv + train_arguments(plan), env
    if plan.launcher == "torchrun":
        argv = [python, "-m", "torch.distributed.run", "--nnodes", str(plan.num_machines),
                "--nproc_per_node", str(plan.processes_per_machine)]
        if multi_node:
            # c10d: machine 0's address is the rendezvous; ranks are assigned as machines join.
            argv += ["--rdzv_backend", "c10d", "--rdzv_endpoint", Expansion(f"{IP}:{PORT}"), "--rdzv_conf", IS_HOST,
                     "--rdzv_id", plan.name, "--node_rank", RANK]
        else:
            argv += ["--master_addr", "127.0.0.1", "--master_port", PORT]
        if plan.strategy == "fsdp":
            env.update(fsdp_environment(plan))
        else:  # Ulysses' mesh, as accelerate launch would export it (empty without it)
            env.update(parallelism_environment(plan))
        # ZeRO: the TRL YAML (sft_config.yaml, ...) names ds_config.json in the Trainer's `deepspeed` field.
        return argv + train_arguments(plan), env
    # The deepspeed launcher counts devices only to fill a missing --num_gpus (on the CPU
    # accelerator: $LOCAL_SIZE or the NUMA nodes); --num_gpus sets the processes per machine.
    # --no_local_rank: the rank comes from $LOCAL_RANK, not an extra `--local_rank=N` argument.
    argv = [python, "-m", "deepspeed.launcher.runner", "--num_nodes", str(plan.num_machines),
            "--num_gpus", str(plan.processes_per_machine), "--master_port", PORT, "--no_local_rank"]
    if multi_node:
        # One launcher per machine (as torchrun): no ssh from machine 0, the rank given here.
        argv += ["--hostfile", HOSTFILE, "--no_ssh", "--node_rank", RANK, "--master_addr", IP]
    env.update(parallelism_environment(plan))
    return argv + ["--module"] + train_arguments(plan)[1:], env


def launch_script(plan: Plan, python: str | None = None) -> str:
    """launch.sh: the exact command, runnable from any directory and from a copied run directory
    (it changes into its own directory first; every path in the configs is relative to it)."""
    argv, env = launch_command(plan)
    python = python or sys.executable
    lines = [
        "#!/usr/bin/env bash",
        _comment(f"llmwizard run '{plan.name}': {plan.strategy} with {plan.launcher} on {plan.hardware}."),
        "# Rerun from anywhere with `bash launch.sh`; extra arguments reach the training entry",
        "# (`bash launch.sh --resume` continues from the last checkpoint).",
        "# LLMWIZARD_PYTHON picks the interpreter (default: the one that exported this run, else python3).",
    ]
    if plan.num_machines > 1:
        lines += [
            f"# {plan.num_machines} machines: run this on each with MACHINE_RANK=0..{plan.num_machines - 1} and",
            "# MAIN_PROCESS_IP set to machine 0's address (slurm.sbatch does both); MAIN_PROCESS_PORT is optional.",
        ]
    lines += [
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "PYTHON=\"${LLMWIZARD_PYTHON:-}\"",
        f'[ -n "$PYTHON" ] || PYTHON={shlex.quote(python)}',
        'command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3',
        "export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false",
        "# The plan's defaults, for where the environment sets no MAIN_PROCESS_PORT / MAIN_PROCESS_IP.",
        f"{PLAN_PORT}={shlex.quote(str(plan.main_process_port))}",
    ]
    if plan.num_machines > 1:
        lines += [
            f"{PLAN_IP}={shlex.quote(plan.main_process_ip)}",
            # The rank goes into shell arithmetic (--rdzv_conf), which would evaluate anything else.
            ('[[ "${MACHINE_RANK:-0}" =~ ^[0-9]+$ ]] || '
             f'{{ echo "launch.sh: MACHINE_RANK must be a number from 0 to {plan.num_machines - 1}, '
             'not \'$MACHINE_RANK\'" >&2; exit 2; }'),
        ]
    if plan.device == "cpu" and plan.launcher != "accelerate":
        # accelerate gives each CPU rank cores/ranks threads; torchrun would default to 1.
        per = plan.processes_per_machine
        lines.append(f': "${{OMP_NUM_THREADS:=$(( $(nproc) / {per} > 1 ? $(nproc) / {per} : 1 ))}}"; '
                     "export OMP_NUM_THREADS")
    lines += [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    lines.append("exec " + " ".join(_shell_word(word) for word in argv) + ' "$@"')
    return "\n".join(lines) + "\n"


def _shell_word(word: str) -> str:
    """An `Expansion` in double quotes (it stays live); any other word shell-quoted, whatever it holds."""
    if isinstance(word, Expansion):
        return f'"{word}"'
    return shlex.quote(word)


def _comment(text: str) -> str:
    """A comment line of the scripts: a line break or other control character in `text` could
    end it and start a command, so each becomes a space."""
    return "# " + "".join(char if char.isprintable() else " " for char in text)


def slurm_script(plan: Plan) -> str:
    """One task per machine; each reads its own rank from its own $SLURM_NODEID."""
    gres = (f"#SBATCH --gpus-per-node={plan.processes_per_machine}" if plan.device == "cuda"
            else "#SBATCH --exclusive")
    return "\n".join([
        "#!/usr/bin/env bash",
        # sbatch reads its options from these comments itself; the schema keeps a name to letters,
        # digits, '.', '_' and '-', and a job name is one word either way.
        f"#SBATCH --job-name={_one_word(plan.name)}",
        f"#SBATCH --nodes={plan.num_machines}",
        "#SBATCH --ntasks-per-node=1",
        gres,
        "#SBATCH --output=slurm-%j.log",
        "# Submit with `sbatch /path/to/run/slurm.sbatch` from anywhere on a shared filesystem.",
        "set -euo pipefail",
        "# Slurm runs a copy of this script, so find the run directory: the submit directory if",
        "# launch.sh is there, else the directory of the script as submitted (scontrol's Command=).",
        'RUN_DIR="${SLURM_SUBMIT_DIR:-$PWD}"',
        'if [ ! -f "$RUN_DIR/launch.sh" ]; then',
        '  RUN_DIR="$(dirname "$(scontrol show job "$SLURM_JOB_ID" | sed -n \'s/^ *Command=//p\')")"',
        "fi",
        'cd "$RUN_DIR"',
        'MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
        f'[ -n "${{MAIN_PROCESS_PORT:-}}" ] || MAIN_PROCESS_PORT={shlex.quote(str(plan.main_process_port))}',
        "export MAIN_PROCESS_IP MAIN_PROCESS_PORT",
        "# \\$SLURM_NODEID is escaped so each machine reads its own rank inside srun; unescaped,",
        "# this shell would expand it once (to 0) for every machine and the job would hang.",
        'srun --kill-on-bad-exit=1 bash -c "MACHINE_RANK=\\$SLURM_NODEID bash launch.sh"',
        "",
    ])


def _one_word(text: str) -> str:
    """`text` with anything but letters, digits, '.', '_' and '-' made '-' (for #SBATCH lines,
    which sbatch parses without a shell)."""
    return "".join(char if char.isascii() and (char.isalnum() or char in "._-") else "-" for char in text)


def readme_text(plan: Plan) -> str:
    """README.txt. Its commands are pasted into a shell, so they name the run directory as `.` and
    hold no plan value; the model and dataset lines are text (one line each, by the schema)."""
    result = f"{OUTPUT_DIR}/ (LoRA adapter, safetensors)" if plan.lora else f"{OUTPUT_DIR}/ (full model, safetensors)"
    setup = (f"{plan.strategy}{' (hybrid shard)' if plan.hybrid_shard else ''}, {plan.method}, {plan.precision}, "
             f"{plan.num_processes} process(es) on {plan.num_machines} machine(s), launched with {plan.launcher}")
    lines = [
        f"llmwizard run: {plan.name}",
        "",
        f"Model    {plan.model}",
        f"Dataset  {plan.dataset}",
        f"Setup    {setup}",
        "",
        "Launch:   llmwizard run .                (exports the run files again from plan.yaml, live loss view)",
        "Rerun:    bash launch.sh                 (the files as they are; from any directory)",
        f"Resume:   llmwizard resume .  or  bash launch.sh --resume   (from the last checkpoint in {OUTPUT_DIR}/)",
        "Follow:   llmwizard watch .   Stop: llmwizard stop .   State: llmwizard status .",
        f"Override: bash launch.sh --max_steps 100 (any {trl_config_name(plan.task)} key, as TRL's --key value)",
        "Edit plan.yaml, not the files made from it: `llmwizard run` exports them again and never",
        "overwrites a hand edit silently (.llmwizard/manifest.json holds each file's sha256).",
    ]
    if plan.num_machines > 1:
        lines += [
            (f"Machines: on each of the {plan.num_machines}: MACHINE_RANK=<0..{plan.num_machines - 1}> "
             "MAIN_PROCESS_IP=<machine 0> bash launch.sh"),
            "          (optional MAIN_PROCESS_PORT; the run directory on a shared filesystem), or sbatch slurm.sbatch",
        ]
    lines += [
        "",
        f"Files: plan.yaml (every choice and its reason), accelerate_config.yaml, {trl_config_name(plan.task)} (TRL),",
        (f"{'ds_config.json (DeepSpeed), ' if plan.strategy.startswith('zero') else ''}launch.sh, "
         f"train.log, metrics.jsonl, {result}."),
        "train.log names the strategy that really ran: `llmwizard: strategy=... world_size=...`.",
        "",
    ]
    return "\n".join(lines)
