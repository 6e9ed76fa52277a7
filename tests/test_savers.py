"""Memory savers: pure bf16 and torchao's low-bit AdamW (llmwizard.autotune.memory.savers), context
parallelism, activation offloading and padding-free packing (llmwizard.autotune.memory.long_context).

The planner picks them only when they buy fit or speed, says the trade-off, and exports files
the real loaders accept; one real CPU run trains in pure bf16 with torchao's 8-bit AdamW and
padding-free packing. Context parallelism and activation offloading do not run on the CPU
(torch's CP shards only CUDA attention kernels; TRL's offloading needs an accelerator), so their
exports are checked by accelerate's and TRL's own loaders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import Goals
from llmwizard.autotune.machine.hardware import from_spec
from llmwizard.autotune.memory import TrainSetup, estimate
from llmwizard.autotune.plan.planner import plan
from llmwizard.autotune.memory.savers import torchao_optimizer_bytes, widest_tensor
from llmwizard.runner.export import export
from tests.conftest import run_cli
from tests.test_planner import LARGE, LLAMA_8B, model
from tests.tiny_models import LEARNING_RATE, assert_loss_falls, losses, make_plan, run_launch_sh

GiB = 1024**3


def _states(setup: TrainSetup) -> float:
    est = estimate(model(LLAMA_8B, "llama-8b"), setup, 80 * GiB)
    return (est.params + est.grads + est.optimizer) / est.total_params


def test_pure_bf16_halves_the_model_states_and_low_bit_states_shrink_them_further():
    mixed = _states(TrainSetup(method="full", optimizer="adamw"))
    pure = _states(TrainSetup(method="full", optimizer="adamw", precision="pure_bf16"))
    pure8 = _states(TrainSetup(method="full", optimizer="torchao_adamw_8bit", precision="pure_bf16"))
    pure4 = _states(TrainSetup(method="full", optimizer="torchao_adamw_4bit", precision="pure_bf16"))
    # fp32 weights, grads and two moments (fused AdamW: no temporary); the same in bf16; 8/4-bit moments
    assert pure == pytest.approx(mixed / 2), (mixed, pure)
    assert pure - pure8 > 1.2 and pure - pure4 > 1.2, (pure, pure8, pure4)
    # 4-bit states take one byte a parameter less than 8-bit ones; its step materialises each
    # moment's codes before packing (bench/torchao_states.py): 18 more bytes of the widest tensor
    m = model(LLAMA_8B, "llama-8b")
    states8, temp8 = torchao_optimizer_bytes(m, TrainSetup(method="full", optimizer="torchao_adamw_8bit"), 1000)
    states4, temp4 = torchao_optimizer_bytes(m, TrainSetup(method="full", optimizer="torchao_adamw_4bit"), 1000)
    assert states8 - states4 == pytest.approx(1000) and temp4 - temp8 == 18 * widest_tensor(m)
    assert pure8 - pure4 == pytest.approx(1 - 18 * widest_tensor(m) / m.total_params, abs=0.01), (pure8, pure4)
    # LoRA under pure_bf16 is LoRA under bf16: the base is bf16 either way, PEFT's adapters fp32
    lora = estimate(model(LLAMA_8B, "llama-8b"), TrainSetup(method="lora"), 80 * GiB)
    lora_pure = estimate(model(LLAMA_8B, "llama-8b"), TrainSetup(method="lora", precision="pure_bf16"), 80 * GiB)
    assert lora.total == lora_pure.total


def test_full_8b_on_one_80gb_gpu_fits_with_a_saver_and_says_the_trade_off():
    m = model(LLAMA_8B, "llama-8b")
    # With a small host (no room for ZeRO-Offload) the planner used to answer "does not fit".
    p = plan(from_spec("1xA100-80GB,ram=64GB"), m, LARGE, Goals(method="full"))
    assert p.offload == "none" and (p.optimizer != "adamw" or p.precision == "pure_bf16")
    assert p.optimizer in p.reasons["optimizer"].lower() or "Adafactor" in p.reasons["optimizer"]
    # Adafactor forbidden: pure bf16 with torchao's 8-bit AdamW, and the reason says it compensates.
    p = plan(from_spec("1xA100-80GB,ram=64GB"), m, LARGE, Goals(method="full", optimizer="torchao_adamw_8bit"))
    assert p.precision == "pure_bf16"
    assert "stochastic" in p.reasons["precision"]
    # Asked for pure bf16 with plain AdamW: it fits, and the reason says small updates are lost.
    p = plan(from_spec("1xH100-80GB"), m, LARGE, Goals(method="full", precision="pure_bf16", optimizer="adamw"))
    assert p.precision == "pure_bf16" and "no compensation" in p.reasons["precision"]


def test_a_saver_is_not_used_when_the_plan_fits_without_one():
    p = plan(from_spec("8xH100-80GB"), model(LLAMA_8B, "llama-8b"), LARGE, Goals(method="full"))
    assert p.precision == "bf16" and p.optimizer == "adamw"
    p = plan(from_spec("1xRTX4090"), model(LLAMA_8B, "llama-8b"), LARGE, Goals(method="lora"))
    assert p.precision == "bf16" and p.optimizer == "adamw"


def test_does_not_fit_advice_is_figured_with_the_leanest_saver():
    with pytest.raises(UserError) as err:
        plan(from_spec("1xRTX4090,ram=32GB"), model(LLAMA_8B, "llama-8b"), LARGE, Goals(method="full"))
    # one GPU: AdaLomo (pure bf16, the update inside backward) is the leanest, a near miss here
    assert "pure_bf16, adalomo, activation offloading" in err.value.message
    assert "headroom" in err.value.message  # it needs less than the GPU has, not less than the planner keeps
    assert "CPU offload on a host with" in err.value.fix
    # more GPUs are searched without AdaLomo, which runs on one
    assert "fits on 2 GPUs (--gpus 2xRTX4090,ram=32GB; 1 more than here): fsdp" in err.value.fix


def test_an_asked_offload_holds_in_every_tier():
    """ZeRO-3 with optimizer offload on one 24 GB GPU at 4096 tokens fits only with activation
    offloading too: that tier keeps the asked offload instead of dropping it."""
    p = plan(from_spec("1xRTX4090,ram=256GB"), model(LLAMA_8B, "llama-8b"), LARGE,
             Goals(method="full", strategy="zero3", offload="optimizer", max_length=4096, allow_truncation=True))
    assert (p.strategy, p.offload, p.activation_offloading) == ("zero3", "optimizer", True)
    assert p.optimizer == "adamw" and p.precision == "bf16"  # no GPU-side saver instead of the asked offload


def test_adalomo_fits_full_fine_tuning_on_one_gpu_where_nothing_else_does_and_says_what_it_costs():
    m = model(LLAMA_8B, "llama-8b")
    p = plan(from_spec("1xA100-40GB,ram=64GB"), m, LARGE, Goals(method="full"))
    assert (p.optimizer, p.precision, p.strategy, p.offload) == ("adalomo", "pure_bf16", "single", "none")
    # no accumulation: the largest micro-batch that fits is the whole batch, here the planner's
    assert p.grad_accum == 1 and p.effective_batch == p.micro_batch == 16 and p.activation_checkpointing
    assert "cannot be accumulated" in p.reasons["effective_batch"]
    assert p.learning_rate == 5e-4 and "relative" in p.reasons["learning_rate"]
    assert "rounds each update to the nearest" in p.reasons["precision"]
    assert "--offload params" in p.reasons["optimizer"] and "needs an NVIDIA GPU" in p.reasons["optimizer"]
    # gradients never pile up: the estimate has no optimizer step, and its gradients are one tensor
    assert "optimizer step" not in p.estimate.phases and p.estimate.grads < 2 * GiB
    # a step cheaper than AdaLomo is taken where it fits, and it is never used across GPUs
    assert plan(from_spec("1xH100-80GB"), m, LARGE, Goals(method="full")).optimizer != "adalomo"
    assert plan(from_spec("2xA100-40GB,ram=64GB"), m, LARGE, Goals(method="full")).optimizer != "adalomo"
    # a fixed effective batch is not given up behind the user's back
    with pytest.raises(UserError) as err:
        plan(from_spec("1xA100-40GB,ram=64GB"), m, LARGE, Goals(method="full", effective_batch=32))
    assert "adalomo" not in err.value.message


def test_adalomo_asked_for_is_refused_where_it_cannot_run():
    from llmwizard.autotune.machine.hardware import detect

    m = model(LLAMA_8B, "llama-8b")
    for hardware, words in ((detect(), "no GPU"), (from_spec("2xH100-80GB"), "2 processes")):
        with pytest.raises(UserError) as err:
            plan(hardware, m, LARGE, Goals(method="full", optimizer="adalomo"))
        assert words in err.value.message and "one process" in err.value.message
    with pytest.raises(UserError) as err:
        plan(from_spec("1xH100-80GB"), m, LARGE, Goals(method="full", optimizer="adalomo", offload="optimizer"))
    assert "offload optimizer" in err.value.message


def test_adalomo_exports_files_the_loaders_accept_and_a_hand_edit_cannot_accumulate(tmp_path: Path, monkeypatch):
    from dataclasses import replace

    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    from llmwizard.autotune.plan.planner import shrink_micro_batch
    from tests.test_export import _gpu_plan

    p = _gpu_plan(spec="1xA100-40GB", method="full", optimizer="adalomo", micro_batch=4)
    assert (p.optimizer, p.grad_accum, p.effective_batch) == ("adalomo", 1, 4)
    export(p, tmp_path)
    monkeypatch.chdir(tmp_path)
    _, training, _ = TrlParser((ScriptArguments, SFTConfig, ModelConfig)).parse_args_and_config(
        ["--config", "sft_config.yaml", "--bf16", "false", "--use_cpu", "true"])
    # the Trainer's own name; no clipping (the gradients are gone by then), no accumulation
    assert (training.optim, training.max_grad_norm, training.gradient_accumulation_steps) == ("adalomo", 0.0, 1)
    with pytest.raises(UserError, match="grad_accum 1"):
        replace(p, grad_accum=2)
    # after an out-of-memory failure the micro-batch halves, and the batch with it
    smaller = shrink_micro_batch(p, "it ran out of memory")
    assert smaller is not None and (smaller.micro_batch, smaller.grad_accum, smaller.effective_batch) == (2, 1, 2)


def test_adalomo_galore_and_apollo_need_their_packages_before_launch(monkeypatch):
    import importlib.util

    from llmwizard.runner.preflight import check_packages

    find_spec = importlib.util.find_spec
    missing = {"lomo_optim", "galore_torch", "apollo_torch"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name, *a))
    for optimizer, package in (("adalomo", "lomo-optim"), ("galore_adamw", "galore-torch"),
                               ("apollo_adamw", "apollo-torch")):
        with pytest.raises(UserError) as err:
            check_packages("full", optimizer)
        assert package in err.value.message and f"pip install {package}" in err.value.fix
    check_packages("full", "adafactor")


def test_pure_bf16_exports_files_the_loaders_accept(tmp_path: Path):
    from accelerate.commands.config.config_args import load_config_from_file
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig
    from trl import SFTConfig

    from llmwizard.autotune.embedded import ensure_embedded_model
    from tests.test_export import _gpu_plan

    fsdp = _gpu_plan(strategy="fsdp", method="full", precision="pure_bf16", optimizer="torchao_adamw_4bit")
    export(fsdp, tmp_path / "fsdp")
    # accelerate's FSDP2 upcasts bf16 weights to fp32 under any mixed precision: pure bf16 runs without
    assert load_config_from_file(str(tmp_path / "fsdp" / "accelerate_config.yaml")).mixed_precision == "no"
    sft = yaml.safe_load((tmp_path / "fsdp" / "sft_config.yaml").read_text())
    assert (sft["dtype"], sft["bf16"], sft["optim"]) == ("bfloat16", False, "adamw_torch_4bit")
    assert sft["optim_args"] == "bf16_stochastic_round=True"

    zero = _gpu_plan(strategy="zero3", method="full", precision="pure_bf16")
    export(zero, tmp_path / "zero")
    ds = json.loads((tmp_path / "zero" / "ds_config.json").read_text())
    assert ds["bf16"]["bf16_master_weights_and_grads"] and ds["bf16"]["bf16_optimizer_states"]
    sft = yaml.safe_load((tmp_path / "zero" / "sft_config.yaml").read_text())
    assert sft["bf16"] is True and "optim_args" not in sft
    args = SFTConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=True, per_device_train_batch_size=1)
    tiny = AutoModelForCausalLM.from_pretrained(ensure_embedded_model())  # before ZeRO-3's config exists
    config = HfTrainerDeepSpeedConfig(ds)
    config.trainer_config_process(args)
    config.trainer_config_finalize(args, model=tiny, num_training_steps=10)
    DeepSpeedConfig(config.config)  # DeepSpeed's own validation, pure bf16 flags included


@pytest.fixture(scope="module")
def pure_bf16_run(tmp_path_factory):
    pytest.importorskip("torchao")
    plan_ = make_plan(family="llama", strategy="single", method="full", processes=1, precision="pure_bf16",
                      optimizer="torchao_adamw_8bit", max_steps=8, packing=True)
    root = tmp_path_factory.mktemp("pure_bf16")
    export(plan_, root / "run")
    result = run_launch_sh(root / "run", root, timeout=400)
    return plan_, root / "run", result


@pytest.mark.slow
def test_pure_bf16_with_torchao_8bit_adamw_and_packing_trains_on_the_cpu(pure_bf16_run):
    import torch
    from safetensors import safe_open

    plan_, run, result = pure_bf16_run
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "stochastic" in plan_.reasons["precision"]
    assert_loss_falls(losses(run))
    with safe_open(str(run / "output" / "model.safetensors"), "pt") as saved:
        assert {saved.get_tensor(key).dtype for key in saved.keys()} == {torch.bfloat16}
    checkpoint = max((run / "output").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = torch.load(checkpoint / "optimizer.pt", weights_only=False)["state"]
    kinds = {type(value).__name__ for states in state.values() for value in states.values()}
    assert "OptimState8bit" in kinds, kinds
    # Packing: the trainer's epoch after one step is 1 / (packed steps per epoch), the plan's figure.
    from llmwizard.runner.metrics import read_metrics

    first = next(r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "log")
    planned = int(plan_.reasons["schedule"].split(" steps per epoch")[0])
    assert round(1 / first["epoch"]) == planned, (first["epoch"], plan_.reasons["schedule"])
    assert f"{planned} steps per epoch instead of" in plan_.reasons["packing"]
    assert yaml.safe_load((run / "sft_config.yaml").read_text())["packing_strategy"] == "bfd"


# GaLore under DDP on two ranks; APOLLO on one process. GaLore scales its projected updates by 0.25
# (its `scale`): four times the rate moves the weights as far.
LOW_RANK_RUNS = {"galore_adamw": (2, 4.0, "GaLoreProjector"), "apollo_adamw": (1, 1.0, "GradientProjector")}


@pytest.fixture(scope="module", params=sorted(LOW_RANK_RUNS))
def low_rank_run(request, tmp_path_factory):
    processes, scale, _ = LOW_RANK_RUNS[request.param]
    plan_ = make_plan(family="llama", strategy="ddp" if processes > 1 else "single", method="full",
                      processes=processes, optimizer=request.param, max_steps=8,
                      learning_rate=scale * LEARNING_RATE["full"])
    root = tmp_path_factory.mktemp(request.param)
    export(plan_, root / "run")
    result = run_launch_sh(root / "run", root, timeout=400)
    return request.param, plan_, root / "run", result


@pytest.mark.slow
def test_galore_and_apollo_train_on_the_cpu_with_their_own_states(low_rank_run):
    import torch

    optimizer, plan_, run, result = low_rank_run
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    processes, _, projector = LOW_RANK_RUNS[optimizer]
    assert plan_.strategy == ("ddp" if processes > 1 else "single") and "rank-128" in plan_.reasons["optimizer"]
    sft = yaml.safe_load((run / "sft_config.yaml").read_text())
    assert (sft["optim"], sft["optim_target_modules"]) == (optimizer, ["self_attn", "mlp"])
    assert_loss_falls(losses(run))
    # the package's own states: a projector for each attention and MLP linear, AdamW's moments elsewhere
    checkpoint = max((run / "output").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = torch.load(checkpoint / "optimizer.pt", weights_only=False)["state"]
    projectors = [s for s in state.values() if type(s.get("projector")).__name__ == projector]
    assert projectors and len(projectors) < len(state), (len(projectors), len(state))


@pytest.mark.parametrize("optimizer", sorted(LOW_RANK_RUNS))
def test_galore_and_apollo_are_refused_where_they_cannot_apply_and_their_states_are_low_rank(optimizer):
    m = model(LLAMA_8B, "llama-8b")
    full = estimate(m, TrainSetup(method="full", optimizer="adamw"), 80 * GiB)
    low = estimate(m, TrainSetup(method="full", optimizer=optimizer), 80 * GiB)
    # the linears' moments shrink to rank 128: what is left is mostly the embedding's and the head's
    assert low.optimizer < full.optimizer / 3 and low.params == full.params and low.grads == full.grads
    for goals, words in ((dict(method="lora"), "method lora"), (dict(method="full", strategy="fsdp"), "strategy fsdp"),
                         (dict(method="full", offload="optimizer"), "offload optimizer")):
        with pytest.raises(UserError) as err:
            plan(from_spec("2xH100-80GB"), m, LARGE, Goals(optimizer=optimizer, **goals))
        assert words in err.value.message and "one process or DDP" in err.value.message
    p = plan(from_spec("4xH100-80GB"), m, LARGE, Goals(method="full", optimizer=optimizer, precision="pure_bf16"))
    assert p.strategy == "ddp" and p.offload == "none"  # the search keeps to what they run under


LONG = None


def _long(examples: int, mean: float, p99: int):
    from llmwizard.autotune.data.dataset import DatasetProfile

    return DatasetProfile(source="long", format="messages", num_examples=examples, measured=examples,
                          tokenizer="synthetic", exact_tokens=True, mean_tokens=mean, p50_tokens=int(mean),
                          p90_tokens=p99, p95_tokens=p99, p99_tokens=p99, max_tokens=p99,
                          total_tokens=int(mean * examples), histogram=[(1, p99, examples)])


def test_long_sequences_split_over_gpus_only_when_one_gpu_per_sequence_does_not_fit_or_is_slower():
    from llmwizard.autotune.model.model_spec import load_model_spec

    mid = _long(5000, 12000.0, 32000)
    p = plan(from_spec("8xH100-80GB"), load_model_spec("llama-3.1-70b"), mid,
             Goals(method="lora", max_length=32768, dataset_size="large"))
    assert p.context_parallel > 1 and p.strategy == "fsdp"
    assert "one GPU per sequence does not fit" in p.reasons["context_parallel"]
    assert p.micro_batch * p.grad_accum * p.num_processes // p.context_parallel == p.effective_batch
    from llmwizard.autotune.plan.planner import setup_of, shrink_micro_batch

    assert estimate(load_model_spec("llama-3.1-70b"), setup_of(p), p.estimate.budget) == p.estimate
    if p.micro_batch > 1:  # after an out-of-memory, the effective batch stays
        smaller = shrink_micro_batch(p, "out of memory")
        assert smaller.micro_batch * smaller.grad_accum * 8 // p.context_parallel == p.effective_batch
    short = plan(from_spec("8xH100-80GB"), load_model_spec("llama-3.1-70b"), mid,
                 Goals(method="lora", max_length=4096, dataset_size="large"))
    assert short.context_parallel == 1


def test_activation_offloading_buys_fit_on_a_gpu_and_is_refused_on_the_cpu():
    from llmwizard.autotune.machine.hardware import detect
    from llmwizard.autotune.model.model_spec import load_model_spec

    long = _long(2000, 60000.0, 120000)
    p = plan(from_spec("1xA100-40GB"), load_model_spec("gemma-3-4b"), long,
             Goals(method="lora", max_length=65536, dataset_size="large"))
    assert p.activation_offloading and "host RAM" in p.reasons["activation_offloading"]
    from llmwizard.autotune.plan.planner import setup_of

    assert estimate(load_model_spec("gemma-3-4b"), setup_of(p), p.estimate.budget) == p.estimate
    assert p.estimate.host_ram > 10 * GiB  # the offloaded activations are counted in host RAM
    assert plan(from_spec("1xH100-80GB"), load_model_spec("gemma-3-4b"), long,
                Goals(method="lora", max_length=65536, dataset_size="large")).activation_offloading is False
    with pytest.raises(UserError):
        plan(detect(), load_model_spec(None), long, Goals(activation_offloading=True))
    # asked for, it holds in whichever tier fits: here a low-memory optimizer's
    for spec in ("1xA100-40GB,ram=64GB", "2xA100-40GB,ram=64GB"):
        asked = plan(from_spec(spec), model(LLAMA_8B, "llama-8b"), LARGE,
                     Goals(method="full", activation_offloading=True))
        assert asked.optimizer != "adamw" and asked.activation_offloading, spec
        assert "asked for" in asked.reasons["activation_offloading"]


def test_liger_savings_are_counted_stated_and_only_for_models_it_patches():
    from dataclasses import replace

    llama = model(LLAMA_8B, "llama-8b")
    without = plan(from_spec("1xRTX4090"), llama, LARGE, Goals())
    with_liger = plan(from_spec("1xRTX4090"), llama, LARGE, Goals(liger_kernel=True))
    assert with_liger.estimate.total < without.estimate.total
    saved = float(with_liger.reasons["liger_kernel"].split(" save ")[1].split(" GiB")[0])
    assert saved > 0.1 and "needs a GPU" in with_liger.reasons["liger_kernel"]
    other = plan(from_spec("1xRTX4090"), replace(llama, model_type="olmo"), LARGE, Goals(liger_kernel=True))
    assert other.liger_kernel and other.estimate.total == without.estimate.total
    assert "none for olmo" in other.reasons["liger_kernel"]
    assert any("no Liger saving for olmo" in w for w in other.warnings)


def test_does_not_fit_advice_names_liger_when_it_would_fit_and_it_does():
    from tests.test_planner import data

    llama, long = model(LLAMA_8B, "llama-8b"), data(5000, 9000.0, 12032)
    with pytest.raises(UserError) as refused:
        plan(from_spec("1xRTX4090"), llama, long, Goals(method="lora", max_length=12032))
    assert "fits with Liger's kernels (--liger-kernel" in refused.value.fix
    fitted = plan(from_spec("1xRTX4090"), llama, long, Goals(method="lora", max_length=12032, liger_kernel=True))
    assert fitted.max_length == 12032 and fitted.liger_kernel


def test_context_parallel_activation_offloading_and_liger_export_files_the_loaders_accept(tmp_path, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.parallelism_config import ParallelismConfig
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    from llmwizard.runner.export.configs import parallelism_environment
    from tests.test_export import _accelerate_args, _gpu_plan

    p = _gpu_plan(spec="8xH100-80GB", strategy="fsdp", context_parallel=4, activation_offloading=True,
                  liger_kernel=True)
    assert (p.context_parallel, p.activation_offloading, p.liger_kernel) == (4, True, True)
    assert "needs a GPU" in p.reasons["liger_kernel"]
    export(p, tmp_path)
    config = load_config_from_file(str(tmp_path / "accelerate_config.yaml"))
    assert config.parallelism_config["parallelism_config_cp_size"] == 4
    args, _ = _accelerate_args(p, tmp_path / "accelerate_config.yaml")
    assert args.parallelism_config_cp_size == 4 and args.parallelism_config_dp_shard_size == 2
    # what the ranks build from the environment accelerate (or torchrun's launch.sh) exports
    for key, value in parallelism_environment(p).items():
        monkeypatch.setenv(key, value)
    mesh = ParallelismConfig()
    assert (mesh.cp_size, mesh.dp_shard_size, mesh.cp_enabled) == (4, 2, True)
    monkeypatch.chdir(tmp_path)
    _, training, _ = TrlParser((ScriptArguments, SFTConfig, ModelConfig)).parse_args_and_config(
        ["--config", "sft_config.yaml", "--bf16", "false", "--use_cpu", "true"])
    assert training.activation_offloading and training.use_liger_kernel and training.pad_to_multiple_of == 8
    assert not training.packing  # TRL refuses packing with context parallelism


def test_ulysses_sequence_parallelism_exports_for_deepspeed(tmp_path, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.parallelism_config import ParallelismConfig

    from llmwizard.runner.export.configs import parallelism_environment
    from llmwizard.runner.export import launch_command
    from tests.test_export import _gpu_plan

    p = _gpu_plan(spec="8xH100-80GB", strategy="zero3", context_parallel=2)
    assert p.context_parallel == 2
    export(p, tmp_path)
    config = load_config_from_file(str(tmp_path / "accelerate_config.yaml"))
    assert config.parallelism_config["parallelism_config_sp_size"] == 2
    assert config.parallelism_config["parallelism_config_sp_backend"] == "deepspeed"
    for key, value in parallelism_environment(p).items():
        monkeypatch.setenv(key, value)
    mesh = ParallelismConfig()
    assert (mesh.sp_size, mesh.sp_enabled, mesh.cp_enabled, mesh.dp_shard_size) == (2, True, False, 4)
    # torchrun and the deepspeed launcher get the same mesh through launch.sh's environment
    torchrun = _gpu_plan(spec="8xH100-80GB", strategy="zero3", context_parallel=2, launcher="torchrun")
    assert launch_command(torchrun)[1]["PARALLELISM_CONFIG_SP_SIZE"] == "2"


def test_a_hand_edited_ulysses_split_the_heads_refuse_is_named_before_launch(tmp_path):
    """plan.yaml edited to split each sequence over 8 ranks of a model with 4 heads: DeepSpeed
    would refuse it inside every rank; `llmwizard run` names it first and changes nothing."""
    out = tmp_path / "run"
    exported = run_cli("export", "--processes", "8", "--strategy", "zero3", "--context-parallel", "2", "--out",
                       str(out), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    plan_file = out / "plan.yaml"
    data = yaml.safe_load(plan_file.read_text())
    data.update(context_parallel=8, grad_accum=data["effective_batch"] // data["micro_batch"])
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = run_cli("run", str(out), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "context_parallel 8" in result.stderr and "4 heads and 2 key/value heads" in result.stderr
    assert "2, 4" in result.stderr  # the sizes that would split them
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_ulysses_sequence_parallelism_trains_on_two_cpu_ranks(tmp_path):
    """Two gloo ranks share every sequence (DeepSpeed Ulysses, ZeRO-2): one data-parallel rank, so
    an epoch takes as many steps as one rank's batches, and the rank says sequence_parallel=2."""
    from llmwizard.runner.metrics import read_metrics
    from tests.tiny_models import strategy_ran

    p = make_plan(family="llama", strategy="zero2", method="lora", processes=2, context_parallel=2, max_steps=3)
    assert p.context_parallel == 2 and "asked for" in p.reasons["context_parallel"]
    export(p, tmp_path / "run")
    result = run_launch_sh(tmp_path / "run", tmp_path, timeout=400)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert strategy_ran(log) == ("zero2", 2) and "sequence_parallel=2" in log
    logs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["type"] == "log" and "loss" in r]
    planned = int(p.reasons["schedule"].split(" steps per epoch")[0])
    # One batch per step across both ranks (without Ulysses: half as many steps). The sampler still
    # splits the rows over the two ranks and Ulysses' loader takes each rank's batches in turn, so
    # each rank's share is rounded up separately: 2 x ceil(200 / 16) = 26 against the plan's 25.
    assert abs(round(1 / logs[0]["epoch"]) - planned) <= 1, (logs[0]["epoch"], planned)
    assert logs[-1]["loss"] < logs[0]["loss"]


def test_estimate_takes_every_saver_flag_and_gives_the_plans_own_figure():
    """`llmwizard estimate` sizes one setup with the plan's engine: given the knobs a plan chose
    (Ulysses over 4 of 8 GPUs, Liger), it prints the plan's figure; each saver moves what it should."""
    planned = run_cli("plan", "--model", "qwen2.5-7b", "--gpus", "8xH100", "--max-length", "32768", "--liger-kernel",
                      "--json")
    assert planned.returncode == 0, planned.stderr
    p = json.loads(planned.stdout)
    assert p["context_parallel"] > 1 and p["liger_kernel"]

    def estimated(*flags: str) -> dict:
        out = run_cli("estimate", "--model", "qwen2.5-7b", "--gpus", "8xH100", "--seq", "32768", "--json", *flags)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    same = estimated("--batch", str(p["micro_batch"]), "--strategy", p["strategy"], "--lora-r", str(p["lora"]["r"]),
                     "--context-parallel", str(p["context_parallel"]), "--liger-kernel",
                     *(["--checkpointing"] if p["activation_checkpointing"] else []))
    assert same["per_gpu"]["total"] == p["estimate"]["per_gpu"]["total"]
    plain = estimated("--batch", "1", "--checkpointing")
    liger = estimated("--batch", "1", "--checkpointing", "--liger-kernel")
    offloaded = estimated("--batch", "1", "--checkpointing", "--activation-offloading")
    split = estimated("--batch", "1", "--checkpointing", "--context-parallel", "2")
    assert liger["per_gpu"]["activations"] < plain["per_gpu"]["activations"]
    assert offloaded["per_gpu"]["total"] < plain["per_gpu"]["total"] and offloaded["host_ram"] > plain["host_ram"]
    assert split["per_gpu"]["activations"] < plain["per_gpu"]["activations"]
    assert plain["host_ram_available"] > 0 and plain["warnings"] == []
