"""The run's configuration files as data: accelerate YAML, DeepSpeed JSON, TRL's YAML for the task.

Pure functions of a Plan. Every key is one the reading library knows: accelerate's config
loader, the HF Trainer's DeepSpeed integration ("auto" wherever it fills the value), and TRL's
TrlParser (ScriptArguments + the task's config class + ModelConfig fields: SFTConfig, DPOConfig,
trl.experimental.orpo's ORPOConfig, KTOConfig or GRPOConfig), which the tests hold them to.
"""

from __future__ import annotations

import math
from typing import Any

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.plan import Plan
from llmwizard.autotune.memory.savers import ADAMW_FUSED, GALORE_TARGETS, LOW_RANK_ARGS, TORCHAO_OPTIMIZERS, fused_in_backward
from llmwizard.runner.rundir import DS_CONFIG, HOSTFILE, METRICS_FILE, OUTPUT_DIR, REPORT_FILE, TENSORBOARD_DIR  # noqa: F401 (re-exported)

_OPTIM = {"adamw": ADAMW_FUSED, "adamw_8bit": "adamw_bnb_8bit", "adafactor": "adafactor", "sgd": "sgd",
          "adalomo": "adalomo", "galore_adamw": "galore_adamw", "apollo_adamw": "apollo_adamw",
          **{name: hf for name, (hf, _) in TORCHAO_OPTIMIZERS.items()}}
_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "pure_bf16": "bfloat16"}


def pure_bf16(plan: Plan) -> bool:
    """Full fine-tuning with bf16 storage and no autocast. (LoRA under pure_bf16 trains as under
    bf16: the base is bf16 either way and PEFT keeps the adapters fp32.)"""
    return plan.precision == "pure_bf16" and plan.method == "full"


def _autocast(plan: Plan) -> str:
    """The mixed precision accelerate and the Trainer apply: none for fp32 and for pure bf16 (the
    weights are bf16 already; accelerate's FSDP2 would upcast them to fp32 for a mixed-precision
    policy), bf16 for LoRA under pure_bf16."""
    if plan.precision == "fp32" or pure_bf16(plan):
        return "no"
    return "bf16" if plan.precision == "pure_bf16" else plan.precision


def accelerate_config(plan: Plan) -> dict[str, Any]:
    """accelerate's config file (what `accelerate config` writes), loadable by its own loader."""
    cpu = plan.device == "cpu"
    multi_node = plan.num_machines > 1
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "num_machines": plan.num_machines,
        "num_processes": plan.num_processes,  # total over all machines
        "machine_rank": 0,  # launch.sh passes --machine_rank from $MACHINE_RANK
        "main_process_port": plan.main_process_port,
        # c10d rendezvous for several machines: accelerate hands torchrun `--rdzv_endpoint ip:port`
        # only when same_network is false; with true it passes master_addr/port, which c10d ignores.
        "rdzv_backend": "c10d" if multi_node else "static",
        "same_network": not multi_node,
        "use_cpu": cpu,
        "gpu_ids": "all",
        "downcast_bf16": "no",
        "main_training_function": "main",
        "enable_cpu_affinity": False,
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
    }
    if multi_node:
        config["main_process_ip"] = plan.main_process_ip
    mixed = _autocast(plan)
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
        if plan.hybrid_shard:
            # HSDP: a 2-D device mesh, shards inside a machine and replicas across machines.
            # accelerate copies these keys onto its launch arguments and exports them as
            # PARALLELISM_CONFIG_* for the ranks' ParallelismConfig.
            config["parallelism_config"] = {
                "parallelism_config_dp_replicate_size": plan.num_machines,
                "parallelism_config_dp_shard_size": plan.processes_per_machine,
            }
        elif plan.context_parallel > 1:
            # Context parallelism: cp ranks share each sequence; FSDP2 shards over dp_shard x cp.
            config["parallelism_config"] = {
                "parallelism_config_dp_shard_size": plan.num_processes // plan.context_parallel,
                "parallelism_config_cp_size": plan.context_parallel,
                "parallelism_config_cp_backend": "torch",
            }
    else:
        # With a DeepSpeed JSON, accelerate refuses mixed_precision, zero_stage, offload,
        # accumulation and clipping beside it (DeepSpeedPlugin._deepspeed_config_checks): the
        # JSON, with "auto" values, carries them.
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "deepspeed_config_file": DS_CONFIG,
            "zero3_init_flag": plan.strategy == "zero3",
        }
        if multi_node:
            # "standard" starts torchrun on each machine (as launch.sh and Slurm do); the default,
            # pdsh, would ssh from machine 0 into the others.
            config["deepspeed_config"]["deepspeed_multinode_launcher"] = "standard"
        if plan.context_parallel > 1:
            # DeepSpeed Ulysses (ALST): sp ranks share each sequence, attention split by heads.
            config["parallelism_config"] = {
                "parallelism_config_dp_shard_size": plan.num_processes // plan.context_parallel,
                "parallelism_config_sp_size": plan.context_parallel,
                "parallelism_config_sp_backend": "deepspeed",
                "parallelism_config_sp_seq_length_is_variable": True,
                "parallelism_config_sp_attn_implementation": "sdpa",
            }
    return config


def fsdp_config(plan: Plan) -> dict[str, Any]:
    """FSDP2 settings (the v1-only keys such as backward_prefetch are not FSDP2's)."""
    return {
        "fsdp_version": 2,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_transformer_layer_cls_to_wrap": plan.layer_cls,
        "fsdp_reshard_after_forward": True,
        # Checkpoints stay sharded (each rank writes its shard: fast, and resumable); the training
        # entry gathers a full state dict for the final save so the result loads anywhere.
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        # Rank 0 reads the weights, the others start on the meta device and receive shards.
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_offload_params": plan.offload != "none",
        # FSDP's own activation checkpointing wraps each decoder layer; the model's
        # gradient checkpointing is left off under FSDP (the Trainer refuses both at once).
        "fsdp_activation_checkpointing": plan.activation_checkpointing,
    }


def fsdp_environment(plan: Plan) -> dict[str, str]:
    """The same FSDP2 settings as accelerate's environment, for torchrun launches.

    These are the variables `accelerate launch` itself exports (accelerate.utils.launch.
    prepare_multi_gpu_env). The switch must read "true": accelerate 1.15 tests
    ACCELERATE_USE_FSDP with `.lower() == "true"`, so the often-quoted ACCELERATE_USE_FSDP=1
    leaves FSDP off in the Accelerator while transformers' loader (strtobool) thinks it is on.
    """
    cfg = fsdp_config(plan)
    return {
        "ACCELERATE_USE_FSDP": "true",
        "FSDP_VERSION": "2",
        "FSDP_AUTO_WRAP_POLICY": cfg["fsdp_auto_wrap_policy"],
        "FSDP_TRANSFORMER_CLS_TO_WRAP": cfg["fsdp_transformer_layer_cls_to_wrap"],
        "FSDP_RESHARD_AFTER_FORWARD": "true",
        "FSDP_STATE_DICT_TYPE": cfg["fsdp_state_dict_type"],
        "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
        "FSDP_OFFLOAD_PARAMS": str(cfg["fsdp_offload_params"]).lower(),
        "FSDP_ACTIVATION_CHECKPOINTING": str(cfg["fsdp_activation_checkpointing"]).lower(),
        **parallelism_environment(plan),
    }


def parallelism_environment(plan: Plan) -> dict[str, str]:
    """HSDP's or context parallelism's mesh as accelerate exports it
    (utils.launch.prepare_extend_env_parallelism_config)."""
    if plan.context_parallel > 1 and plan.strategy != "fsdp":
        return {
            "ACCELERATE_USE_PARALLELISM_CONFIG": "true",
            "PARALLELISM_CONFIG_DP_REPLICATE_SIZE": "1",
            "PARALLELISM_CONFIG_DP_SHARD_SIZE": str(plan.num_processes // plan.context_parallel),
            "PARALLELISM_CONFIG_SP_SIZE": str(plan.context_parallel),
            "PARALLELISM_CONFIG_SP_BACKEND": "deepspeed",
            "PARALLELISM_CONFIG_SP_SEQ_LENGTH_IS_VARIABLE": "true",
            "PARALLELISM_CONFIG_SP_ATTN_IMPLEMENTATION": "sdpa",
        }
    if plan.context_parallel > 1 and not plan.hybrid_shard:
        return {
            "ACCELERATE_USE_PARALLELISM_CONFIG": "true",
            "PARALLELISM_CONFIG_DP_REPLICATE_SIZE": "1",
            "PARALLELISM_CONFIG_DP_SHARD_SIZE": str(plan.num_processes // plan.context_parallel),
            "PARALLELISM_CONFIG_CP_SIZE": str(plan.context_parallel),
            "PARALLELISM_CONFIG_CP_BACKEND": "torch",
        }
    if not plan.hybrid_shard:
        return {}
    return {
        "ACCELERATE_USE_PARALLELISM_CONFIG": "true",
        "PARALLELISM_CONFIG_DP_REPLICATE_SIZE": str(plan.num_machines),
        "PARALLELISM_CONFIG_DP_SHARD_SIZE": str(plan.processes_per_machine),
    }


def deepspeed_config(plan: Plan) -> dict[str, Any] | None:
    """DeepSpeed JSON for the HF Trainer: "auto" wherever transformers' HfTrainerDeepSpeedConfig
    fills the value from the training arguments or the model (batch sizes, accumulation,
    clipping, precision, hidden-size based buckets), so the two can never disagree."""
    if not plan.strategy.startswith("zero"):
        return None
    gpu = plan.device == "cuda"
    zero: dict[str, Any] = {
        "stage": 3 if plan.strategy == "zero3" else 2,
        # Overlapping reduction with backward needs CUDA streams; the CPU accelerator has none.
        "overlap_comm": gpu,
        "contiguous_gradients": True,
        "reduce_scatter": True,
        "reduce_bucket_size": "auto",
    }
    if plan.strategy == "zero2":
        zero["allgather_partitions"] = True
        zero["allgather_bucket_size"] = 200_000_000  # DeepSpeed's default (5e8) costs 4.5x in buffers
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
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": gpu}
    if plan.offload == "params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": gpu}
    config: dict[str, Any] = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto", **({
            # DeepSpeed's pure bf16: no fp32 master partition, bf16 optimizer states.
            "bf16_master_weights_and_grads": True, "bf16_optimizer_states": True} if pure_bf16(plan) else {})},
        "fp16": {"enabled": "auto", "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    if plan.offload != "none":
        if plan.optimizer == "adamw":
            # With an offloaded optimizer DeepSpeed refuses the Trainer's torch AdamW
            # (zero_force_ds_cpu_optimizer); naming AdamW here makes it use its CPU Adam, and the
            # Trainer fills lr, betas, eps and weight decay. The Trainer's scheduler still runs.
            config["optimizer"] = {"type": "AdamW", "params": {
                "lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}}
        else:
            config["zero_force_ds_cpu_optimizer"] = False  # keep the planned optimizer, on the CPU
    return config


# The keys of the SFT YAML that a task's config class has no field for (what TRL 1.16's DPOConfig,
# ORPOConfig, KTOConfig and GRPOConfig lack; tests/test_task_export.py holds this to the classes).
# Packing is SFT's; ORPO and GRPO have no activation offloading; ORPO pads to no multiple; GRPO
# truncates no sequence (its length is the prompt plus max_completion_length).
_NOT_A_FIELD: dict[str, tuple[str, ...]] = {
    "sft": (),
    "dpo": ("packing", "packing_strategy"),
    "kto": ("packing", "packing_strategy"),
    "orpo": ("packing", "packing_strategy", "activation_offloading", "pad_to_multiple_of"),
    "grpo": ("packing", "packing_strategy", "activation_offloading", "max_length"),
}
# Of those, the ones that carry a choice of plan.yaml: a task that cannot take it is refused by its key.
_PLAN_KEYS = {"packing": "packing", "packing_strategy": "packing", "activation_offloading": "activation_offloading",
              "pad_to_multiple_of": "context_parallel"}


def trl_config(plan: Plan) -> dict[str, Any]:
    """The TRL YAML of the plan's task (rundir.trl_config_name): flat TrlParser keys, every one a field
    of ScriptArguments, the task's config class or ModelConfig. SFT's is `sft_config`; a preference
    or reward task takes what it shares with SFT and adds its own settings (`task_keys`)."""
    config = sft_config(plan)
    if plan.task == "sft":
        return config
    for key in _NOT_A_FIELD[plan.task]:
        value = config.pop(key, None)
        if value and key in _PLAN_KEYS:
            setting = _PLAN_KEYS[key]
            raise UserError(f"plan.yaml sets {setting}: {getattr(plan, setting)!r}, which TRL's {plan.task.upper()} "
                            "trainer cannot do.", title="Task",
                            fix=f"Set {setting} back to its default in plan.yaml, or train with task sft.")
    config.update(task_keys(plan))
    return config


def task_keys(plan: Plan) -> dict[str, Any]:
    """A preference or reward task's own keys, from plan.task_settings."""
    settings = plan.task_settings
    assert settings is not None, "a task other than sft has task_settings (Plan checks it)"
    keys: dict[str, Any] = {"beta": settings.beta}
    if plan.task in ("dpo", "kto"):
        # The reference's log-probabilities in one pass over the data before training: no second model
        # (full fine-tuning) and no adapter-disabled forward per step (LoRA) while training.
        keys["precompute_ref_log_probs"] = settings.reference == "precompute"
    if plan.task == "orpo" and settings.max_completion_length is not None:
        keys["max_completion_length"] = settings.max_completion_length
    if plan.task == "grpo":
        assert settings.num_generations is not None and settings.max_completion_length is not None
        keys.update({
            "num_generations": settings.num_generations,
            "max_completion_length": settings.max_completion_length,
            "temperature": settings.temperature if settings.temperature is not None else 1.0,
            # Evaluation samples whole groups too: GRPOConfig requires per-device eval batch x processes
            # to divide by num_generations.
            "per_device_eval_batch_size": grpo_eval_batch(plan.micro_batch, plan.num_processes,
                                                          settings.num_generations),
        })
        if plan.eval_fraction > 0:
            # GRPO's loss is no measure of the model (it centres on 0 every step); the held-out
            # prompts' mean reward is, and higher is better.
            keys.update({"metric_for_best_model": "eval_reward", "greater_is_better": True})
    return keys


def grpo_eval_batch(micro_batch: int, processes: int, generations: int) -> int:
    """The smallest per-device eval batch of at least `micro_batch` whose total over the processes
    holds whole groups of `generations` completions."""
    step = generations // math.gcd(generations, processes)
    return step * -(-micro_batch // step)


def sft_config(plan: Plan) -> dict[str, Any]:
    """Flat TrlParser keys; every one is a field of ScriptArguments, SFTConfig or ModelConfig.
    Preference and reward tasks start from these (`trl_config`)."""
    cpu = plan.device == "cpu"
    evaluate = plan.eval_fraction > 0
    config: dict[str, Any] = {
        "model_name_or_path": plan.model,
        "trust_remote_code": plan.trust_remote_code,  # SFTConfig's: the training entry's model loading reads it
        "dtype": _model_dtype(plan),
        "dataset_name": plan.dataset,
        "output_dir": OUTPUT_DIR,
        "seed": plan.seed,
        "use_cpu": cpu,
        # Pure bf16 runs without autocast, except under DeepSpeed, whose bf16 mode ("auto": the
        # Trainer's bf16) is what keeps its partitions and states in bf16.
        "bf16": _autocast(plan) == "bf16" or (pure_bf16(plan) and plan.strategy.startswith("zero")),
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
        # torchao's low-bit AdamW rounds bf16 updates stochastically under pure bf16.
        "optim_args": "bf16_stochastic_round=True" if pure_bf16(plan) and plan.optimizer in TORCHAO_OPTIMIZERS
        else LOW_RANK_ARGS.get(plan.optimizer),
        # GaLore's and APOLLO's low-rank states: the decoder's attention and MLP linears
        "optim_target_modules": GALORE_TARGETS if plan.optimizer in LOW_RANK_ARGS else None,
        # AdaLomo's gradients are gone by the time the Trainer would clip them (it would log a norm
        # of 0); it normalises each update by its RMS instead.
        "max_grad_norm": 0.0 if fused_in_backward(plan.optimizer) else 1.0,
        "max_length": plan.max_length,
        # Padding-free packing: best-fit rows of max_length (TRL turns padding_free on for "bfd").
        "packing": plan.packing,
        "packing_strategy": "bfd" if plan.packing else None,
        "activation_offloading": plan.activation_offloading or None,
        "use_liger_kernel": plan.liger_kernel or None,
        # plan.yaml's attention kernel (sdpa is transformers' own default, left unwritten).
        "attn_implementation": {"flash": "flash_attention_2", "eager": "eager"}.get(plan.attention),
        # Context parallelism shards each sequence in 2 x cp load-balanced chunks.
        "pad_to_multiple_of": 2 * plan.context_parallel if plan.context_parallel > 1 else None,
        # Under FSDP the wrapper checkpoints each layer itself (fsdp_activation_checkpointing).
        "activation_checkpointing": plan.activation_checkpointing and plan.strategy != "fsdp",
        "logging_steps": plan.logging_steps,
        "logging_first_step": True,
        # Log NaN/Inf losses as they are: the divergence diagnostic must see them (the callback
        # enforces this too; written here so the YAML says what runs).
        "logging_nan_inf_filter": False,
        "include_num_input_tokens_seen": True,
        "save_strategy": "steps",
        "save_steps": plan.save_steps,
        "save_total_limit": 2,
        "eval_strategy": "steps" if evaluate else "no",
        "eval_steps": plan.eval_steps,
        "load_best_model_at_end": evaluate,
        "metric_for_best_model": "eval_loss" if evaluate else None,
        "greater_is_better": False if evaluate else None,
        "report_to": list(plan.report_to) or "none",
        "disable_tqdm": True,
        # A trained vision tower gets no gradient from a batch without images; DDP must then look
        # for unused parameters (TRL's own choice for vision-language models).
        "ddp_find_unused_parameters": plan.train_vision_tower and plan.strategy == "ddp",
    }
    if plan.activation_checkpointing and plan.strategy != "fsdp":
        config["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    if plan.lora is not None:
        config.update({
            "use_peft": True,
            "lora_r": plan.lora.r,
            "lora_alpha": plan.lora.alpha,
            "lora_dropout": plan.lora.dropout,
            # The planner's PEFT form: plain names, or one regex that skips a vision tower.
            "lora_target_modules": list(plan.lora.peft_targets or plan.lora.target_modules),
        })
        if plan.lora.target_parameters:  # MoE: the routed experts' fused weights (PEFT ParamWrapper)
            config["lora_target_parameters"] = list(plan.lora.target_parameters)
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
        config["deepspeed"] = DS_CONFIG  # the HF Trainer's own DeepSpeed integration
    env: dict[str, str] = {}
    if plan.report_to:
        config["run_name"] = plan.name     # the run's name in every tracker
    if "trackio" in plan.report_to:
        config["project"] = "llmwizard"    # Trackio's project: local files unless TRACKIO_SPACE_ID is set
    if "tensorboard" in plan.report_to:
        env["TENSORBOARD_LOGGING_DIR"] = TENSORBOARD_DIR   # event files beside metrics.jsonl
    if plan.device == "cuda":
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    if env:
        config["env"] = env
    return {k: v for k, v in config.items() if v is not None}


def _model_dtype(plan: Plan) -> str:
    if pure_bf16(plan):
        return "bfloat16"  # weights, gradients and optimizer states in bf16, no fp32 master
    if plan.device == "cpu" or plan.precision == "fp32":
        return "float32"
    if plan.method == "full":
        return "float32"  # fp32 master weights; bf16/fp16 autocast does the compute
    return _DTYPE[plan.precision]  # frozen base in half precision; PEFT keeps adapters fp32
