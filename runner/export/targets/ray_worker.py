"""The Ray Train side of ray_train.py: the driver (`main`) and what each worker runs (`train_loop`).

Ray's TorchTrainer sets up the process group and RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT in each worker, as torchrun would; the worker adds the environment torchrun's launch.sh
exports for the plan's strategy (FSDP's ACCELERATE_* / FSDP_* settings, HSDP or context-parallel
meshes; for ZeRO the Trainer reads ds_config.json) and runs the per-rank training entry in-process.
A Trainer callback reports each checkpoint to Ray storage; a rerun resumes from the last one.
Imported only inside Ray (it imports ray); the planning path never loads it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

DRIVER_HELP = "Run the plan's training on a Ray cluster with Ray Train (extra arguments reach TRL: --max_steps 100)."


def worker_arguments(run_dir: Path) -> tuple[list[str], dict[str, str]]:
    """(arguments of the training entry, environment) as launch.sh under torchrun would give them."""
    from llmwizard.autotune.plan import Plan
    from llmwizard.runner.export.configs import DS_CONFIG, trl_config
    from llmwizard.runner.export.scripts import launch_command, train_arguments

    plan = Plan.load(run_dir / "plan.yaml")
    _, env = launch_command(dataclasses.replace(plan, launcher="torchrun"))
    args = train_arguments(plan)[2:]  # without "-m llmwizard.runner.rank.train"
    if plan.strategy.startswith("zero") and "deepspeed" not in trl_config(plan):
        args += ["--deepspeed", DS_CONFIG]  # what accelerate launch would have handed the Trainer
    env.update({"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
    return args, env


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: one rank of the plan's training."""
    import ray.train
    from llmwizard.runner.rank.train import main as train_main

    if config["run_dir"]:  # else the job's working directory (ray job submit --working-dir .) is the run directory
        os.chdir(config["run_dir"])
    args, env = worker_arguments(Path.cwd())
    os.environ.update(env)
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as restored:
        resume = ["--resume_from_checkpoint", str(restored)] if restored else []
        code = train_main(args + config["extra"] + resume, extra_callbacks=[_report_callback()])
    if code:
        raise RuntimeError(f"the training entry ended with exit code {code} (train.log / the worker log says why)")


def _report_callback() -> Any:
    """A Trainer callback that reports each saved checkpoint to Ray storage (one upload per machine:
    its local rank 0 sends what that machine wrote; Ray merges them into one checkpoint)."""
    import ray.train
    import torch.distributed as dist
    from transformers import TrainerCallback

    class ReportCheckpoints(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # every rank's files (optimizer shards, RNG state) are written
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            upload = os.environ.get("LOCAL_RANK", "0") == "0" and folder.is_dir()
            loss = next((entry["loss"] for entry in reversed(state.log_history) if "loss" in entry), None)
            ray.train.report({"step": state.global_step, **({"loss": loss} if loss is not None else {})},
                             checkpoint=ray.train.Checkpoint.from_directory(str(folder)) if upload else None,
                             checkpoint_dir_name=folder.name)

    return ReportCheckpoints()


def main(run_dir: Path, settings: dict[str, Any], argv: list[str]) -> int:
    """The driver: connect to the cluster (or start one here with --local-cpus), fit, say where the
    checkpoints are."""
    parser = argparse.ArgumentParser(prog="python ray_train.py", description=DRIVER_HELP)
    parser.add_argument("--storage-path", default=settings["storage_path"],
                        help=f"Ray storage every node shares (default {settings['storage_path']}; s3://, gs://, NFS)")
    parser.add_argument("--local-cpus", type=int, default=0, metavar="N",
                        help="start a Ray cluster of N CPUs on this machine alone (loopback) instead of joining one")
    own, extra = parser.parse_known_args(argv)
    workers, use_gpu = settings["num_workers"], settings["use_gpu"]
    if own.local_cpus < 0 or (own.local_cpus and not use_gpu and own.local_cpus < workers):
        # Fewer CPUs than workers would leave Ray waiting for resources that never come.
        parser.error(f"--local-cpus must be at least the plan's {workers} workers (one CPU each), not "
                     f"{own.local_cpus}")

    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if own.local_cpus:
        ray.init(address="local", num_cpus=own.local_cpus, object_store_memory=200 * 1024**2,
                 include_dashboard=False, _node_ip_address="127.0.0.1")
        short = {key: (amount * workers, ray.cluster_resources().get(key, 0))
                 for key, amount in settings["resources_per_worker"].items()
                 if ray.cluster_resources().get(key, 0) < amount * workers}
        if short:  # a local cluster never grows: Ray would wait for them forever
            ray.shutdown()
            wanted = ", ".join(f"{need:g} {key} (this machine has {have:g})" for key, (need, have) in short.items())
            parser.exit(2, f"python ray_train.py: the plan's {workers} workers need {wanted}; run it on a Ray "
                           "cluster that has them (ray job submit), or export a plan for this machine.\n")
    else:
        ray.init()  # RAY_ADDRESS, or the cluster `ray start` made on this machine
    shipped = bool((ray.get_runtime_context().runtime_env or {}).get("working_dir"))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"run_dir": None if shipped else str(run_dir), "extra": extra},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker=settings["resources_per_worker"]),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=settings["name"], storage_path=str(own.storage_path),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.checkpoint is not None:
        print(f"llmwizard: last checkpoint in Ray storage: {result.checkpoint.path}", flush=True)
    ray.shutdown()
    return 0
