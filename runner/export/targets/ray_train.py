"""ray_train.py: a Ray Train driver for the plan (`ray job submit --working-dir . -- python ray_train.py`).

The driver runs the plan's TRL training in a `TorchTrainer` whose `ScalingConfig` is the plan's
world (one worker per process, a GPU each on CUDA plans); each worker runs the same per-rank entry
as launch.sh with the strategy's environment (llmwizard.runner.export.targets.ray_worker). Checkpoints are
reported to Ray storage (`RunConfig.storage_path`, shared by every node), and a rerun of the same
driver resumes from the last one.
"""

from __future__ import annotations

import pprint

from llmwizard.autotune.plan import Plan
from llmwizard.runner.export.targets import cannot_express, comment_block

# Where Ray keeps the checkpoints unless the driver is given --storage-path: the cluster's shared
# storage as Anyscale and the KubeRay examples mount it.
STORAGE_PATH = "/mnt/cluster_storage/llmwizard"


def settings(plan: Plan) -> dict[str, object]:
    """The driver's settings: Python literals only (the driver is code; nothing is spliced as text)."""
    if plan.hybrid_shard and plan.num_machines > 1:
        raise cannot_express(
            "ray", plan, f"hybrid sharding (HSDP) shards over the {plan.processes_per_machine} processes of each "
            f"machine and replicates across the {plan.num_machines} machines, which needs ranks grouped "
            f"{plan.processes_per_machine} to a machine; Ray Train places its workers wherever resources are "
            "free, so a machine's workers are not that group and the mesh's shard groups would span machines",
            "Choose a strategy Ray Train can place: --strategy zero3, or hybrid_shard: false in plan.yaml "
            "(FSDP over all processes).")
    cuda = plan.device == "cuda"
    return {
        "name": plan.name,
        "num_workers": plan.num_processes,
        "use_gpu": cuda,
        "resources_per_worker": {"GPU": 1} if cuda else {"CPU": 1},
        "storage_path": STORAGE_PATH,
    }


def render(plan: Plan) -> tuple[str, int]:
    values = settings(plan)
    header = comment_block([
        (f"Ray Train driver for llmwizard run '{plan.name}': {plan.strategy}, {plan.num_processes} worker(s) "
        f"({'one GPU each' if plan.device == 'cuda' else 'CPU'})."),
        f"Needs: the storage path {STORAGE_PATH} on storage every node shares (or --storage-path s3://...,",
        "a shared NFS path); llmwizard installed on every node (pip install llmwizard 'ray[train]').",
        "Submit from this directory: ray job submit --working-dir . -- python ray_train.py   (docs/ray.md)",
        "On this machine alone: python ray_train.py --local-cpus 2. Extra arguments reach TRL (--max_steps 100).",
    ])
    return "\n".join([
        "#!/usr/bin/env python3",
        header.rstrip("\n"),
        "import sys",
        "from pathlib import Path",
        "",
        "from llmwizard.runner.export.targets.ray_worker import main",
        "",
        "SETTINGS = " + pprint.pformat(values, width=100, sort_dicts=False),
        "",
        'if __name__ == "__main__":',
        "    sys.exit(main(Path(__file__).resolve().parent, SETTINGS, sys.argv[1:]))",
        "",
    ]), 0o755
