"""Planner decisions over model x hardware x method x dataset size, as an expert would sign them."""

from __future__ import annotations

import pytest

from llmwizard.autotune.data.dataset import DatasetProfile
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import Goals
from llmwizard.autotune.machine.hardware import from_spec
from llmwizard.autotune.model.model_spec import spec_from_config
from llmwizard.autotune.plan.planner import plan

LLAMA_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "max_position_embeddings": 131072, "tie_word_embeddings": False}
LLAMA_70B = dict(LLAMA_8B, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64)
LLAMA_1B = dict(LLAMA_8B, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, tie_word_embeddings=True)


def model(config: dict, name: str):
    return spec_from_config(name, "catalog", None, config)


def data(examples: int, mean: float, p99: int, longest: int | None = None) -> DatasetProfile:
    longest = longest or p99
    return DatasetProfile(source="/data/train.jsonl", format="messages", num_examples=examples,
                          measured=examples, tokenizer="test", exact_tokens=True, mean_tokens=mean,
                          p50_tokens=int(mean), p90_tokens=p99, p95_tokens=p99, p99_tokens=p99,
                          max_tokens=longest, total_tokens=int(mean * examples),
                          histogram=[(1, p99, examples)])


SMALL = data(600, 300.0, 900)
LARGE = data(20000, 700.0, 1800, 4000)


def test_small_dataset_rules():
    p = plan(from_spec("1xH100-80GB"), model(LLAMA_8B, "llama-8b"), SMALL, Goals())
    assert (p.epochs, p.learning_rate, p.lora.r) == (20, 2e-4, 4)
    assert p.max_length == 960  # p99 900 rounded up to a multiple of 64
    assert "small" in p.reasons["dataset"]


def test_large_dataset_rules_cap_the_length():
    p = plan(from_spec("1xH100-80GB"), model(LLAMA_8B, "llama-8b"), LARGE, Goals())
    assert (p.epochs, p.learning_rate, p.lora.r) == (10, 1e-4, 8)
    assert p.max_length == 1856
    assert any("truncated" in w for w in p.warnings)  # the longest example is 4000 tokens


def test_8b_lora_on_one_24gb_gpu_fits():
    p = plan(from_spec("1xRTX4090"), model(LLAMA_8B, "llama-8b"), SMALL, Goals(method="lora"))
    assert p.strategy == "single" and p.num_processes == 1
    assert p.precision == "bf16"
    assert p.estimate.fits and p.estimate.total <= p.estimate.budget
    assert p.micro_batch * p.grad_accum == p.effective_batch
    assert all(p.reasons.get(k) for k in ("strategy", "batch", "precision", "max_length", "lora"))


def test_8b_full_fine_tuning_on_8x80gb_shards_the_states():
    p = plan(from_spec("8xH100-80GB"), model(LLAMA_8B, "llama-8b"), LARGE, Goals(method="full"))
    assert p.strategy in ("zero2", "fsdp", "zero3"), p.reasons["strategy"]
    assert p.num_processes == 8
    assert p.estimate.fits
    assert p.learning_rate == pytest.approx(1e-5)  # a tenth of the LoRA rule for full fine-tuning


def test_full_fine_tuning_never_replicates_what_does_not_fit():
    p = plan(from_spec("4xRTX4090"), model(LLAMA_1B, "llama-1b"), SMALL, Goals(method="full"))
    # 16 bytes x 1.24B parameters = 20 GB of model states: replicated (DDP) cannot fit in 24 GB.
    assert p.strategy != "ddp"


def test_small_model_on_many_gpus_stays_replicated():
    p = plan(from_spec("4xH100-80GB"), model(LLAMA_1B, "llama-1b"), SMALL, Goals(method="lora"))
    assert p.strategy == "ddp", p.reasons["strategy"]


def test_70b_on_one_24gb_gpu_says_what_it_needs():
    with pytest.raises(UserError) as err:
        plan(from_spec("1xRTX4090"), model(LLAMA_70B, "llama-70b"), SMALL, Goals(method="lora"))
    assert "does not fit" in err.value.message
    assert "more" in err.value.fix and "GPU" in err.value.fix


def test_effective_batch_is_kept_across_hardware():
    for spec in ("1xH100-80GB", "2xH100-80GB", "4xRTX4090", "8xH100-80GB"):
        p = plan(from_spec(spec), model(LLAMA_1B, "llama-1b"), SMALL, Goals(effective_batch=32))
        assert p.micro_batch * p.grad_accum * p.num_processes == 32, spec


def test_fp16_below_compute_capability_8():
    hw = from_spec("1x16GB")
    hw.gpus = [g.__class__(**{**g.__dict__, "compute_capability": (7, 5)}) for g in hw.gpus]
    p = plan(hw, model(LLAMA_1B, "llama-1b"), SMALL, Goals())
    assert p.precision == "fp16"
    with pytest.raises(UserError, match="bf16 needs compute capability 8.0"):
        plan(hw, model(LLAMA_1B, "llama-1b"), SMALL, Goals(precision="bf16"))


def test_multi_node_counts_every_process():
    p = plan(from_spec("8xH100-80GB", nodes=2), model(LLAMA_8B, "llama-8b"), LARGE, Goals(method="full"))
    assert p.num_machines == 2 and p.num_processes == 16
    assert p.micro_batch * p.grad_accum * 16 == p.effective_batch


def test_examples_longer_than_the_model_allows_are_refused():
    long = data(500, 300.0, 900, longest=200_000)
    with pytest.raises(UserError, match="allow-truncation"):
        plan(from_spec("1xH100-80GB"), model(LLAMA_8B, "llama-8b"), long, Goals())
    p = plan(from_spec("1xH100-80GB"), model(LLAMA_8B, "llama-8b"), long, Goals(allow_truncation=True))
    assert p.max_length <= 131072


def test_more_processes_than_gpus_is_refused():
    with pytest.raises(UserError, match="Duplicate GPU"):
        plan(from_spec("2xRTX4090"), model(LLAMA_1B, "llama-1b"), SMALL, Goals(processes=4))


def test_qlora_needs_a_gpu():
    from llmwizard.autotune.machine.hardware import HardwareProfile

    cpu = HardwareProfile(source="spec", gpus=[], host_ram_available=16 * 2**30, host_ram_total=16 * 2**30)
    with pytest.raises(UserError, match="QLoRA needs an NVIDIA GPU"):
        plan(cpu, model(LLAMA_1B, "llama-1b"), SMALL, Goals(method="qlora"))


def test_every_choice_has_a_reason():
    p = plan(from_spec("4xRTX4090"), model(LLAMA_8B, "llama-8b"), LARGE, Goals())
    for key in ("dataset", "method", "epochs", "learning_rate", "lora", "max_length", "precision", "device",
                "strategy", "activation_checkpointing", "batch", "launcher", "schedule"):
        assert p.reasons.get(key), key


def test_multi_node_fsdp_keeps_weight_gathers_inside_a_node():
    p = plan(from_spec("8xH100-80GB", nodes=2), model(LLAMA_8B, "llama-8b"), LARGE,
             Goals(method="full", strategy="fsdp"))
    assert p.hybrid_shard, p.reasons["strategy"]
    assert "HSDP" in p.reasons["strategy"]
    one_node = plan(from_spec("8xH100-80GB"), model(LLAMA_8B, "llama-8b"), LARGE,
                    Goals(method="full", strategy="fsdp"))
    assert not one_node.hybrid_shard


def test_full_fine_tuning_falls_back_to_8bit_adamw_before_offload():
    # 16 bytes x 1.5B parameters (LLaMA-1B with 20 layers) = 24 GB of model states before any
    # activation: too much for 24 GB at 1856 tokens with plain AdamW, fine with 8-bit states.
    wider = dict(LLAMA_1B, num_hidden_layers=20)
    p = plan(from_spec("1xRTX4090"), model(wider, "llama-1b"), LARGE, Goals(method="full"))
    assert p.optimizer == "adamw_8bit" and p.offload == "none"
    assert "8-bit" in p.reasons["optimizer"]
    with pytest.raises(UserError):  # asked for plain AdamW, no offload, no sharding: nothing fits
        plan(from_spec("1xRTX4090"), model(wider, "llama-1b"), LARGE,
             Goals(method="full", optimizer="adamw", offload="none"))


def test_single_gpu_offload_uses_deepspeed():
    # DeepSpeed's estimators: offloaded states take about 16 B/param x 1.5 of host RAM (~190 GB here).
    with pytest.raises(UserError) as err:
        plan(from_spec("1xA100-80GB,ram=128GB"), model(LLAMA_8B, "llama-8b"), LARGE,
             Goals(method="full", optimizer="adamw"))
    assert "CPU offload on a host with" in err.value.fix
    hardware = from_spec("1xA100-80GB,ram=512GB")
    p = plan(hardware, model(LLAMA_8B, "llama-8b"), LARGE, Goals(method="full", optimizer="adamw"))
    assert p.num_processes == 1
    assert p.strategy in ("zero2", "zero3") and p.offload != "none", p.reasons["strategy"]
    assert "host RAM" in p.reasons["offload"]
    assert p.estimate.host_ram <= hardware.host_ram_available


def test_a_forced_micro_batch_raises_the_effective_batch_instead_of_zero_accumulation():
    p = plan(from_spec("4xH100-80GB"), model(LLAMA_1B, "llama-1b"), SMALL, Goals(micro_batch=16, effective_batch=16))
    assert p.grad_accum >= 1
    assert p.micro_batch * p.grad_accum * p.num_processes == p.effective_batch == 64
    assert any("raised from 16 to 64" in w for w in p.warnings)


def test_a_forced_choice_that_does_not_fit_is_named_with_what_would():
    with pytest.raises(UserError) as err:
        plan(from_spec("1xRTX4090"), model(LLAMA_8B, "llama-8b"), LARGE, Goals(micro_batch=64))
    assert err.value.message.startswith("micro batch 64 does not fit")
    assert "Leave it to the planner" in err.value.fix and "micro-batch" in err.value.fix


def test_setup_of_matches_the_plans_estimate():
    from llmwizard.autotune.memory import estimate
    from llmwizard.autotune.plan.planner import setup_of

    p = plan(from_spec("4xRTX4090"), model(LLAMA_8B, "llama-8b"), LARGE, Goals())
    assert estimate(model(LLAMA_8B, "llama-8b"), setup_of(p), p.estimate.budget) == p.estimate


def test_reasons_come_in_the_order_of_the_steps():
    """plan() records each step's reason as it decides: dataset rules, length, precision, world,
    the search's choices, batch, launcher, schedule (a face lists them in this order)."""
    p = plan(from_spec("1xRTX4090,ram=256GB"), model(LLAMA_8B, "llama-8b"), LARGE,
             Goals(method="full", max_length=1024))
    assert list(p.reasons) == ["dataset", "method", "epochs", "learning_rate", "max_length", "precision", "device",
                               "strategy", "optimizer", "offload", "activation_checkpointing", "batch", "launcher",
                               "schedule"]
    assert p.warnings and "truncated" in p.warnings[0]
    lora = plan(from_spec("2xRTX4090"), model(LLAMA_1B, "llama-1b"), SMALL, Goals(micro_batch=3))
    assert list(lora.reasons)[:5] == ["dataset", "method", "epochs", "learning_rate", "lora"]
    assert "offload" not in lora.reasons and "fused AdamW" in lora.reasons["optimizer"]
    assert any("Effective batch raised from 16 to 18" in w for w in lora.warnings)


def test_odd_but_allowed_values_are_planned_with_a_warning():
    """A value the schema allows but that is almost surely a mistake is not accepted silently."""
    from llmwizard.autotune.model.model_spec import load_model_spec

    cpu = from_spec("cpu")
    m = load_model_spec(None)  # the embedded tiny model: fits any CPU
    small = data(400, 20.0, 40, 60)
    quiet = plan(cpu, m, small, Goals(method="lora"))
    assert not any("Learning rate" in w or "Precision" in w for w in quiet.warnings)
    loud = plan(cpu, m, small, Goals(method="lora").merged(learning_rate=0.5, precision="bf16"))
    assert loud.learning_rate == 0.5 and loud.precision == "bf16"  # planned as asked (the schema stops at 1)
    assert any(w.startswith("Learning rate 0.5 is far above") for w in loud.warnings), loud.warnings
    assert any(w.startswith("Precision bf16 on the CPU") for w in loud.warnings), loud.warnings
