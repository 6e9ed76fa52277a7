"""trainjob.yaml: a Kubeflow Trainer v2 TrainJob for the plan (`kubectl apply -f trainjob.yaml`).

The TrainJob uses the `torch-distributed` ClusterTrainingRuntime: the controller starts
`numNodes` pods and injects PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and
PET_MASTER_PORT into each. The command maps them onto launch.sh's MACHINE_RANK, MAIN_PROCESS_IP
and MAIN_PROCESS_PORT (torchrun would read PET_* itself; accelerate and DeepSpeed do not) and runs
the plan's launch from the run directory, which every pod mounts from one shared volume (a
ReadWriteMany PersistentVolumeClaim), so checkpoints are shared and a restarted job resumes.
"""

from __future__ import annotations

import shlex
from typing import Any

from llmwizard.autotune.plan import Plan
from llmwizard.runner.export.targets import comment_block, dns_label, dump_yaml, expect_variable, required_packages

RUNTIME = "torch-distributed"
GPU_RESOURCE = "nvidia.com/gpu"          # the NVIDIA device plugin's resource key
RUN_DIR_MOUNT = "/workspace/run"
IMAGE = "pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime"
CONTAINER = "node"                       # the torch-distributed runtime's trainer container and job


def volume_claim(plan: Plan) -> str:
    return dns_label(f"{plan.name}-run")


def command_script(plan: Plan) -> str:
    """What each pod runs: the PET_* checks and mapping, then the plan's launch."""
    return "\n".join([
        "set -euo pipefail",
        expect_variable("PET_NNODES", plan.num_machines, "machines", "the TrainJob"),
        expect_variable("PET_NPROC_PER_NODE", plan.processes_per_machine, "processes per machine", "the TrainJob"),
        'cd "$LLMWIZARD_RUN_DIR"',
        "# An image without llmwizard gets it (and what it brings: torch, TRL, accelerate) first.",
        '"${LLMWIZARD_PYTHON:-python3}" -c "import llmwizard.runner.rank.train" 2>/dev/null || '
        '"${LLMWIZARD_PYTHON:-python3}" -m pip install ' + " ".join(shlex.quote(p) for p in required_packages(plan)),
        "# The controller's variables, as launch.sh reads them (accelerate and DeepSpeed read no PET_*).",
        'MACHINE_RANK="$PET_NODE_RANK" MAIN_PROCESS_IP="$PET_MASTER_ADDR" MAIN_PROCESS_PORT="$PET_MASTER_PORT"',
        "export MACHINE_RANK MAIN_PROCESS_IP MAIN_PROCESS_PORT",
        "# The run directory is on the shared volume: a restarted job continues from the last checkpoint.",
        "exec bash launch.sh --resume",
    ]) + "\n"


def train_job(plan: Plan) -> dict[str, Any]:
    """The TrainJob (trainer.kubeflow.org/v1alpha1) as a Kubernetes manifest."""
    per_node = plan.processes_per_machine
    if plan.device == "cuda":
        resources = {"limits": {GPU_RESOURCE: str(per_node)}}
    else:
        resources = {"requests": {"cpu": str(max(2, per_node))}}
    pod_spec = {
        "volumes": [{"name": "run-dir", "persistentVolumeClaim": {"claimName": volume_claim(plan)}}],
        "containers": [{"name": CONTAINER, "volumeMounts": [{"name": "run-dir", "mountPath": RUN_DIR_MOUNT}]}],
    }
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": dns_label(plan.name)},
        "spec": {
            "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": RUNTIME},
            "trainer": {
                "image": IMAGE,
                "numNodes": plan.num_machines,
                "numProcPerNode": per_node,
                "resourcesPerNode": resources,
                "env": [{"name": "LLMWIZARD_RUN_DIR", "value": RUN_DIR_MOUNT}],
                "command": ["bash", "-c", command_script(plan)],
            },
            "runtimePatches": [{
                "manager": "llmwizard",
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                    "name": CONTAINER, "template": {"spec": {"template": {"spec": pod_spec}}},
                }]}}},
            }],
        },
    }


def render(plan: Plan) -> tuple[str, int]:
    data = train_job(plan)
    needs = (f"GPU resource key {GPU_RESOURCE} ({plan.processes_per_machine} per node)" if plan.device == "cuda"
             else f"{max(2, plan.processes_per_machine)} CPUs per node")
    header = comment_block([
        (f"Kubeflow Trainer v2 TrainJob for llmwizard run '{plan.name}': {plan.strategy} with {plan.launcher}, "
        f"{plan.num_machines} node(s) x {plan.processes_per_machine} process(es)."),
        f"Needs: the ClusterTrainingRuntime {RUNTIME}; {needs}; the shared volume: a ReadWriteMany",
        f"PersistentVolumeClaim {volume_claim(plan)} holding this run directory (mounted at {RUN_DIR_MOUNT});",
        f"an image with Python and pip ({IMAGE}; the command installs llmwizard where it is missing).",
        "Submit: kubectl apply -f trainjob.yaml   (docs/kubernetes.md)",
    ])
    return header + dump_yaml(data), 0o644
