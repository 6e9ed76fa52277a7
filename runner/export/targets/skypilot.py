"""skypilot.yaml: a SkyPilot task for the plan (`sky launch -c NAME skypilot.yaml`).

SkyPilot syncs `workdir` (this run directory) to every node and runs `run` there on each, with
SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS (the head first), SKYPILOT_NUM_NODES and
SKYPILOT_NUM_GPUS_PER_NODE set; `run` maps them onto launch.sh's MACHINE_RANK and MAIN_PROCESS_IP
and starts the plan's launch. Checkpoints go to a mounted bucket (CHECKPOINT_DIR), and every start
passes --resume, so a node SkyPilot brings back after a preemption continues from the last one.
"""

from __future__ import annotations

from typing import Any

from llmwizard.autotune.machine.gpu_catalog import CATALOG
from llmwizard.autotune.plan import Plan
from llmwizard.runner.export.targets import (
    cannot_express,
    comment_block,
    dns_label,
    dump_yaml,
    expect_variable,
    required_packages,
)

# SkyPilot's accelerator names for the catalog's GPUs (`sky show-gpus`).
ACCELERATORS: dict[str, str] = {
    "T4": "T4", "V100-16GB": "V100", "V100-32GB": "V100-32GB", "A10G": "A10G", "L4": "L4", "L40S": "L40S",
    "RTX3090": "RTX3090", "RTX4090": "RTX4090", "RTX5090": "RTX5090", "A100-40GB": "A100",
    "A100-80GB": "A100-80GB", "H100-80GB": "H100", "H100-PCIE": "H100", "H200": "H200", "B200": "B200",
}
CHECKPOINT_MOUNT = "/checkpoints"


def accelerator(plan: Plan) -> str:
    """SkyPilot's name for the plan's GPU, read from the catalog name the plan was made for."""
    for key, gpu in sorted(CATALOG.items(), key=lambda item: -len(item[1].name)):
        if gpu.name in plan.hardware and key in ACCELERATORS:
            return ACCELERATORS[key]
    raise cannot_express(
        "skypilot", plan, f"SkyPilot provisions GPUs by name, and the plan's hardware ({plan.hardware}) is no "
        f"GPU it names ({', '.join(sorted(set(ACCELERATORS.values())))})",
        "Plan for a GPU SkyPilot names (--gpus 8xH100-80GB, 4xL4, ...).")


def task(plan: Plan) -> dict[str, Any]:
    """The task as SkyPilot's YAML (sky.Task.from_yaml_config reads it)."""
    if plan.device == "cuda":
        resources: dict[str, Any] = {"accelerators": f"{accelerator(plan)}:{plan.processes_per_machine}"}
    else:
        resources = {"cpus": f"{max(2, plan.processes_per_machine)}+"}
    bucket = dns_label(f"llmwizard-{plan.name}-checkpoints")
    lines = [
        "set -euo pipefail",
        expect_variable("SKYPILOT_NUM_NODES", plan.num_machines, "machines", "SkyPilot"),
    ]
    if plan.device == "cuda":
        lines.append(expect_variable("SKYPILOT_NUM_GPUS_PER_NODE", plan.processes_per_machine, "GPUs per machine",
                                     "SkyPilot"))
    lines += [
        "# launch.sh's per-machine variables, from SkyPilot's: the head's address is the first line.",
        'MACHINE_RANK="$SKYPILOT_NODE_RANK"',
        'MAIN_PROCESS_IP="$(printf \'%s\\n\' "$SKYPILOT_NODE_IPS" | head -n 1)"',
        "export MACHINE_RANK MAIN_PROCESS_IP",
        'mkdir -p "$CHECKPOINT_DIR"',
        "# Checkpoints on the mounted bucket; --resume continues from the last one after a preemption.",
        'exec bash launch.sh --output_dir "$CHECKPOINT_DIR" --resume',
    ]
    return {
        "name": dns_label(plan.name),
        "num_nodes": plan.num_machines,
        "resources": resources,
        "workdir": ".",
        "envs": {"CHECKPOINT_DIR": f"{CHECKPOINT_MOUNT}/{dns_label(plan.name)}"},
        "file_mounts": {CHECKPOINT_MOUNT: {"name": bucket, "mode": "MOUNT"}},
        "setup": "set -euo pipefail\npython3 -m pip install " + " ".join(
            f"'{package}'" for package in required_packages(plan)) + "\n",
        "run": "\n".join(lines) + "\n",
    }


def render(plan: Plan) -> tuple[str, int]:
    data = task(plan)
    needs = (f"accelerator {data['resources']['accelerators']} (name:count per node)" if plan.device == "cuda"
             else f"{data['resources']['cpus']} CPUs per node")
    header = comment_block([
        (f"SkyPilot task for llmwizard run '{plan.name}': {plan.strategy} with {plan.launcher}, "
        f"{plan.num_machines} node(s) x {plan.processes_per_machine} process(es)."),
        (f"Needs: {needs}; the bucket {data['file_mounts'][CHECKPOINT_MOUNT]['name']} mounted at {CHECKPOINT_MOUNT} "
        "(created if missing; rename it if the name is taken)."),
        "Launch from this directory: sky launch -c <cluster> skypilot.yaml   (docs/skypilot.md)",
        "Other checkpoint place: sky launch ... --env CHECKPOINT_DIR=/path/on/a/shared/volume",
    ])
    return header + dump_yaml(data), 0o644
