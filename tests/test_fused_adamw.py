"""AdamW as transformers runs it by default on torch >= 2.8: the fused kernel, exported, modelled
without foreach's temporary, measured so on real CPU tensors, and named in the plan's reason."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest
import yaml

from llmwizard.autotune.goals import Goals
from llmwizard.autotune.machine.hardware import from_spec
from llmwizard.autotune.plan.planner import plan
from llmwizard.autotune.plan.probe import next_tier
from llmwizard.autotune.memory.savers import ADAMW_DEEPSPEED_CPU_WHY, ADAMW_FUSED, ADAMW_FUSED_WHY
from llmwizard.runner.export.configs import deepspeed_config, sft_config
from tests.conftest import ROOT
from tests.test_planner import LARGE, LLAMA_8B, model


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fused_adamw_cpu", ROOT / "bench" / "fused_adamw_cpu.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["fused_adamw_cpu"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_step_temporaries_measured_on_real_cpu_tensors_are_the_modelled_ones(dtype: str, monkeypatch):
    """foreach builds one more tensor the size of the states; the fused kernel (which runs on CPU
    tensors in this torch) builds none: what llmwizard.autotune.memory.model_states counts for each."""
    import torch

    bench = _bench()
    monkeypatch.setattr(bench, "SHAPES", [(256, 512)] * 3)
    for implementation, modelled in bench.MODELLED.items():
        assert bench.step_peak(implementation, getattr(torch, dtype)) == pytest.approx(modelled, abs=0.01)


def test_a_gpu_plan_exports_the_fused_adamw_and_says_why():
    p = plan(from_spec("8xH100-80GB"), model(LLAMA_8B, "llama-8b"), LARGE, Goals(method="full"))
    assert p.optimizer == "adamw" and p.offload == "none"
    assert sft_config(p)["optim"] == ADAMW_FUSED == "adamw_torch_fused"
    assert p.reasons["optimizer"].endswith(ADAMW_FUSED_WHY)


def test_the_cpu_plan_exports_the_fused_adamw_too():
    p = plan(from_spec("cpu,ram=64GB"), model(LLAMA_8B, "llama-8b"), LARGE, Goals(method="lora", max_length=512))
    assert sft_config(p)["optim"] == "adamw_torch_fused" and ADAMW_FUSED_WHY in p.reasons["optimizer"]


def test_zero_offload_names_deepspeeds_cpu_adam_and_a_probe_moving_the_states_says_so():
    offloaded = plan(from_spec("1xA100-80GB,ram=512GB"), model(LLAMA_8B, "llama-8b"), LARGE,
                     Goals(method="full", strategy="zero2", offload="optimizer", optimizer="adamw"))
    assert offloaded.reasons["optimizer"].endswith(ADAMW_DEEPSPEED_CPU_WHY)
    assert deepspeed_config(offloaded)["optimizer"]["type"] == "AdamW"
    assert ADAMW_FUSED_WHY not in offloaded.reasons["optimizer"]
    on_gpu = plan(from_spec("8xH100-80GB"), model(LLAMA_8B, "llama-8b"), LARGE, Goals(method="full"))
    moved = next_tier(on_gpu, "the probe ran out of GPU memory")
    assert moved is not None and moved.strategy.startswith("zero") and moved.offload == "optimizer"
    assert moved.reasons["optimizer"].endswith(ADAMW_DEEPSPEED_CPU_WHY)
    assert ADAMW_FUSED_WHY not in moved.reasons["optimizer"]
    assert yaml.safe_dump(moved.reasons)  # (plain text, as plan.yaml writes it)
