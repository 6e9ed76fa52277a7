"""Exporters: pure functions from a Plan to the files a run is launched from.

    plan.yaml               the Plan itself; loads back into an equal Plan
    accelerate_config.yaml  accelerate's config (CPU, DDP, FSDP2 or DeepSpeed)
    ds_config.json          DeepSpeed ZeRO-2/3, "auto" wherever the HF Trainer fills the value
    sft_config.yaml         TRL's TrlParser format (ScriptArguments + SFTConfig + ModelConfig)
    launch.sh               the exact command, runnable from anywhere: `bash launch.sh`
    slurm.sbatch            multi-node runs under Slurm
    README.txt              how to rerun

Nothing secret is written: hub tokens and tracker keys stay in the environment.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from autotune.plan import Plan

OUTPUT_DIR = "output"
METRICS_FILE = "metrics.jsonl"

_OPTIM = {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit", "adafactor": "adafactor", "sgd": "sgd"}
_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def accelerate_config(plan: Plan) -> dict[str, Any]:
    cpu = plan.device == "cpu"
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "num_machines": plan.num_machines,
        "num_processes": plan.num_processes,  # total over all machines
        "machine_rank": 0,
        "main_process_port": plan.main_process_port,
        "rdzv_backend": "static" if plan.num_machines == 1 else "c10d",
        "same_network": True,
        "use_cpu": cpu,
        "gpu_ids": "all",
        "downcast_bf16": "no",
        "main_training_function": "main",
        "enable_cpu_affinity": False,
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
    }
    if plan.num_machines > 1:
        config["main_process_ip"] = plan.main_process_ip
    mixed = "no" if plan.precision == "fp32" else plan.precision
    if plan.strategy == "single":
        config["distributed_type"] = "NO"
        config["mixed_precision"] = mixed
    elif plan.strategy == "ddp":
        # MULTI_GPU routes `accelerate launch` through torchrun; on the CPU each rank then joins
        # a gloo group because the training arguments say use_cpu (MULTI_CPU would need MPI).
        config["distributed_type"] = "MULTI_GPU"
        config["mixed_precision"] = mixed
    elif plan.strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["mixed_precision"] = mixed
        config["fsdp_config"] = fsdp_config(plan)
    else:
        # With a DeepSpeed JSON, accelerate refuses mixed_precision, zero_stage, offload,
        # accumulation and clipping beside it: the JSON (with "auto") carries them.
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "deepspeed_config_file": "ds_config.json",
            "zero3_init_flag": plan.strategy == "zero3",
        }
    return config


def fsdp_config(plan: Plan) -> dict[str, Any]:
    """FSDP2 settings (the v1-only keys such as backward_prefetch are not FSDP2's)."""
    return {
        "fsdp_version": 2,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_transformer_layer_cls_to_wrap": plan.layer_cls,
        "fsdp_reshard_after_forward": True,
        "fsdp_state_dict_type": "FULL_STATE_DICT",
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_offload_params": plan.offload != "none",
        # FSDP's own activation checkpointing wraps each decoder layer; the model's
        # gradient checkpointing is left off under FSDP (it would checkpoint twice).
        "fsdp_activation_checkpointing": plan.activation_checkpointing,
    }


def fsdp_environment(plan: Plan) -> dict[str, str]:
    """The same FSDP2 settings as accelerate's environment, for torchrun launches."""
    cfg = fsdp_config(plan)
    return {
        "ACCELERATE_USE_FSDP": "1",
        "FSDP_VERSION": "2",
        "FSDP_AUTO_WRAP_POLICY": cfg["fsdp_auto_wrap_policy"],
        "FSDP_TRANSFORMER_CLS_TO_WRAP": cfg["fsdp_transformer_layer_cls_to_wrap"],
        "FSDP_RESHARD_AFTER_FORWARD": "true",
        "FSDP_STATE_DICT_TYPE": cfg["fsdp_state_dict_type"],
        "FSDP_CPU_RAM_EFFICIENT_LOADING": "1",
        "FSDP_OFFLOAD_PARAMS": str(cfg["fsdp_offload_params"]).lower(),
        "FSDP_ACTIVATION_CHECKPOINTING": str(cfg["fsdp_activation_checkpointing"]).lower(),
        "ACCELERATE_MIXED_PRECISION": "no" if plan.precision == "fp32" else plan.precision,
    }


def deepspeed_config(plan: Plan) -> dict[str, Any] | None:
    if not plan.strategy.startswith("zero"):
        return None
    pin = plan.device == "cuda"
    zero: dict[str, Any] = {
        "stage": 3 if plan.strategy == "zero3" else 2,
        "overlap_comm": plan.device == "cuda",
        "contiguous_gradients": True,
        "reduce_scatter": True,
        "reduce_bucket_size": "auto",
    }
    if plan.strategy == "zero2":
        zero["allgather_partitions"] = True
        zero["allgather_bucket_size"] = 200_000_000
    else:
        zero.update({
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_max_live_parameters": 1_000_000_000,
            "stage3_max_reuse_distance": 1_000_000_000,
            # Gather the full weights when saving, so the result loads without DeepSpeed.
            "stage3_gather_16bit_weights_on_model_save": True,
        })
    if plan.offload in ("optimizer", "params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if plan.offload == "params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto", "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }


def sft_config(plan: Plan) -> dict[str, Any]:
    """Flat TrlParser keys; every one is a field of ScriptArguments, SFTConfig or ModelConfig."""
    cpu = plan.device == "cpu"
    evaluate = plan.eval_fraction > 0
    config: dict[str, Any] = {
        "model_name_or_path": plan.model,
        "dtype": _model_dtype(plan),
        "dataset_name": plan.dataset,
        "output_dir": OUTPUT_DIR,
        "seed": plan.seed,
        "use_cpu": cpu,
        "bf16": plan.precision == "bf16",
        "fp16": plan.precision == "fp16",
        "per_device_train_batch_size": plan.micro_batch,
        "per_device_eval_batch_size": plan.micro_batch,
        "gradient_accumulation_steps": plan.grad_accum,
        "num_train_epochs": plan.epochs,
        "max_steps": plan.max_steps,
        "learning_rate": plan.learning_rate,
        "lr_scheduler_type": plan.lr_scheduler,
        "warmup_steps": plan.warmup_ratio,  # below 1: a share of the total steps
        "weight_decay": plan.weight_decay,
        "optim": _OPTIM[plan.optimizer],
        "max_grad_norm": 1.0,
        "max_length": plan.max_length,
        "packing": False,
        # Under FSDP the wrapper checkpoints each layer itself (fsdp_activation_checkpointing).
        "activation_checkpointing": plan.activation_checkpointing and plan.strategy != "fsdp",
        "logging_steps": plan.logging_steps,
        "logging_first_step": True,
        "include_num_input_tokens_seen": True,
        "save_strategy": "steps",
        "save_steps": plan.save_steps,
        "save_total_limit": 2,
        "eval_strategy": "steps" if evaluate else "no",
        "eval_steps": plan.eval_steps,
        "load_best_model_at_end": evaluate,
        "metric_for_best_model": "eval_loss" if evaluate else None,
        "greater_is_better": False if evaluate else None,
        "report_to": "none",
        "disable_tqdm": True,
        "ddp_find_unused_parameters": False,
    }
    if plan.activation_checkpointing and plan.strategy != "fsdp":
        config["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    if plan.lora is not None:
        config.update({
            "use_peft": True,
            "lora_r": plan.lora.r,
            "lora_alpha": plan.lora.alpha,
            "lora_dropout": plan.lora.dropout,
            "lora_target_modules": list(plan.lora.target_modules),
        })
    if plan.method == "qlora":
        config.update({
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "use_bnb_nested_quant": True,
        })
        if plan.strategy in ("fsdp", "zero3"):
            # Sharding a 4-bit model needs its storage dtype to match the other weights.
            config["bnb_4bit_quant_storage"] = "bfloat16"
    if plan.launcher != "accelerate" and plan.strategy.startswith("zero"):
        config["deepspeed"] = "ds_config.json"  # the HF Trainer's own DeepSpeed integration
    if plan.device == "cuda":
        config["env"] = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    return {k: v for k, v in config.items() if v is not None}


def _model_dtype(plan: Plan) -> str:
    if plan.device == "cpu" or plan.precision == "fp32":
        return "float32"
    if plan.method == "full":
        return "float32"  # fp32 master weights; bf16/fp16 autocast does the compute
    return _DTYPE[plan.precision]  # frozen base in half precision; PEFT keeps adapters fp32


def train_arguments(plan: Plan) -> list[str]:
    """What follows the launcher: the per-rank entry and its options."""
    args = ["-m", "runner.train", "--config", "sft_config.yaml", "--metrics-file", METRICS_FILE]
    if plan.eval_fraction > 0:
        args += ["--eval-fraction", f"{plan.eval_fraction:g}"]
    return args


def launch_command(plan: Plan, python: str = "$PYTHON") -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) as launch.sh runs it. Rank-specific values come from the
    environment: MACHINE_RANK, MAIN_PROCESS_IP, MAIN_PROCESS_PORT."""
    rank, ip, port = "${MACHINE_RANK:-0}", "${MAIN_PROCESS_IP:-" + plan.main_process_ip + "}", \
        "${MAIN_PROCESS_PORT:-" + str(plan.main_process_port) + "}"
    env: dict[str, str] = {}
    if plan.launcher == "accelerate":
        argv = [python, "-m", "accelerate.commands.launch", "--config_file", "accelerate_config.yaml",
                "--main_process_port", port]
        if plan.num_machines > 1:
            argv += ["--machine_rank", rank, "--main_process_ip", ip]
    elif plan.launcher == "torchrun":
        argv = [python, "-m", "torch.distributed.run", "--nnodes", str(plan.num_machines),
                "--nproc_per_node", str(plan.processes_per_machine)]
        if plan.num_machines > 1:
            argv += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"{ip}:{port}", "--rdzv_id", plan.name,
                     "--node_rank", rank]
        else:
            argv += ["--master_addr", "127.0.0.1", "--master_port", port]
        if plan.strategy == "fsdp":
            env.update(fsdp_environment(plan))
        elif plan.precision != "fp32":
            env["ACCELERATE_MIXED_PRECISION"] = plan.precision
    else:
        argv = [python, "-m", "deepspeed.launcher.runner", "--num_nodes", str(plan.num_machines),
                "--num_gpus", str(plan.processes_per_machine), "--master_port", port]
        if plan.num_machines > 1:
            argv += ["--hostfile", "hostfile", "--master_addr", ip]
        argv += ["--module"]
        return argv + train_arguments(plan)[1:], env
    return argv + train_arguments(plan), env


def launch_script(plan: Plan, python: str | None = None) -> str:
    argv, env = launch_command(plan)
    python = python or sys.executable
    lines = [
        "#!/usr/bin/env bash",
        f"# llmwizard run '{plan.name}': {plan.strategy} on {plan.hardware}.",
        "# Rerun from anywhere with `bash launch.sh`; extra arguments reach the training entry",
        "# (`bash launch.sh --resume` continues from the last checkpoint).",
    ]
    if plan.num_machines > 1:
        lines += [
            f"# {plan.num_machines} machines: run this on each with MACHINE_RANK=0..{plan.num_machines - 1} and",
            "# MAIN_PROCESS_IP set to machine 0's address (slurm.sbatch does both).",
        ]
    lines += [
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f"PYTHON=\"${{PYTHON:-{python}}}\"",
        'command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3',
        "export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false",
    ]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    lines.append("exec " + " ".join(_shell_word(word) for word in argv) + ' "$@"')
    return "\n".join(lines) + "\n"


def _shell_word(word: str) -> str:
    """Quote a word, leaving ${VAR:-default} and $PYTHON expansions live inside double quotes."""
    if word.startswith("$"):
        return f'"{word}"'
    return shlex.quote(word)


def slurm_script(plan: Plan) -> str:
    """One task per node; each node's rank comes from its own $SLURM_NODEID."""
    return "\n".join([
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={plan.name}",
        f"#SBATCH --nodes={plan.num_machines}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={plan.processes_per_machine}" if plan.device == "cuda" else "#SBATCH --exclusive",
        "#SBATCH --output=slurm-%j.log",
        "# Submit from the run directory: sbatch slurm.sbatch",
        "set -euo pipefail",
        'cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")}"',
        'MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"MAIN_PROCESS_PORT=${{MAIN_PROCESS_PORT:-{plan.main_process_port}}}",
        "export MAIN_PROCESS_IP MAIN_PROCESS_PORT",
        "# \\$SLURM_NODEID is escaped so each node reads its own rank; unescaped, every node",
        "# would get rank 0 from the submitting shell and the job would hang.",
        'srun --kill-on-bad-exit=1 bash -c "MACHINE_RANK=\\$SLURM_NODEID bash launch.sh"',
        "",
    ])


def readme_text(plan: Plan) -> str:
    result = f"{OUTPUT_DIR}/ (adapter)" if plan.lora else f"{OUTPUT_DIR}/ (model)"
    return f"""llmwizard run: {plan.name}

Model    {plan.model}
Dataset  {plan.dataset}
Setup    {plan.strategy}, {plan.method}, {plan.precision}, {plan.num_processes} process(es) on {plan.num_machines} machine(s)

Rerun:    bash launch.sh                 (needs llmwizard installed: pip install llmwizard)
Resume:   bash launch.sh --resume        (continues from the last checkpoint in {OUTPUT_DIR}/)
Watch:    llmwizard run .                (launches with the live loss view)
Multi-node: MACHINE_RANK=<i> MAIN_PROCESS_IP=<node 0> bash launch.sh on each node, or sbatch slurm.sbatch

Files: plan.yaml (every choice and its reason), accelerate_config.yaml, sft_config.yaml (TRL),
ds_config.json (DeepSpeed runs), launch.sh, train.log, metrics.jsonl, {result}.
"""


def export(plan: Plan, directory: Path, python: str | None = None) -> list[Path]:
    """Write every file for `plan` into `directory`; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def write(name: str, text: str, mode: int = 0o644) -> None:
        path = directory / name
        path.write_text(text, encoding="utf-8")
        path.chmod(mode)
        written.append(path)

    plan.save(directory / "plan.yaml")
    written.append(directory / "plan.yaml")
    write("accelerate_config.yaml", _yaml(accelerate_config(plan)))
    ds = deepspeed_config(plan)
    if ds is not None:
        write("ds_config.json", json.dumps(ds, indent=2) + "\n")
    write("sft_config.yaml", "# TRL SFT config (TrlParser): python -m runner.train --config sft_config.yaml\n"
          + _yaml(sft_config(plan)))
    write("launch.sh", launch_script(plan, python), 0o755)
    if plan.num_machines > 1:
        write("slurm.sbatch", slurm_script(plan), 0o755)
        if plan.launcher == "deepspeed":
            write("hostfile", "".join(f"node{i} slots={plan.processes_per_machine}\n"
                                      for i in range(plan.num_machines)))
    write("README.txt", readme_text(plan))
    return written


def _yaml(data: dict[str, Any]) -> str:
    # safe_dump quotes strings like "no" that would otherwise load back as booleans.
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
