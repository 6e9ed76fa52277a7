"""Mixture-of-Experts and custom architectures are planned as what they are.

A config that names its own code (auto_map) or a model_type llmwizard does not know is refused
unless the user consents to running that code (--trust-remote-code); expert settings the planner
does not read are refused by name; the experts of Qwen3-MoE, Mixtral and gpt-oss are counted
exactly (formula == meta device), with active parameters, LoRA targets and ZeRO-3 leaf modules.
Each refusal runs the real `llmwizard plan` on real files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.model_spec import load_model_spec
from llmwizard.autotune.param_counts import count_on_meta, spec_from_config
from tests.conftest import run_cli
from tests.refusals import assert_refused, flat

# Tiny configs of each MoE family, as their released config.json spell them.
QWEN3_MOE: dict[str, Any] = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 64,
    "intermediate_size": 96, "moe_intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 300, "num_experts": 8, "num_experts_per_tok": 2,
    "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True, "output_router_logits": False,
    "router_aux_loss_coef": 0.001, "tie_word_embeddings": False,
}
MIXTRAL: dict[str, Any] = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
    "num_local_experts": 4, "num_experts_per_tok": 2, "router_jitter_noise": 0.0, "tie_word_embeddings": False,
}
GPT_OSS: dict[str, Any] = {
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 64, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "vocab_size": 300, "num_local_experts": 4, "num_experts_per_tok": 2, "experts_per_token": 2,
    "attention_bias": True, "tie_word_embeddings": False,
    "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]},
}
LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
}
DROP = object()

# A model that brings its own code (a Qwen3-MoE under another name), as a hub repository would.
CUSTOM_CODE = {
    "configuration_homemoe.py": (
        "from transformers.models.qwen3_moe.configuration_qwen3_moe import Qwen3MoeConfig\n\n\n"
        "class HomeMoeConfig(Qwen3MoeConfig):\n    model_type = 'homemoe'\n"),
    "modeling_homemoe.py": (
        "from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeForCausalLM\n\n"
        "from .configuration_homemoe import HomeMoeConfig\n\n\n"
        "class HomeMoeForCausalLM(Qwen3MoeForCausalLM):\n    config_class = HomeMoeConfig\n"),
}
CUSTOM: dict[str, Any] = {
    **{k: v for k, v in QWEN3_MOE.items() if k not in ("decoder_sparse_step", "mlp_only_layers")},
    "architectures": ["HomeMoeForCausalLM"], "model_type": "homemoe",
    "auto_map": {"AutoConfig": "configuration_homemoe.HomeMoeConfig",
                 "AutoModelForCausalLM": "modeling_homemoe.HomeMoeForCausalLM"},
}


def _model_dir(directory: Path, base: dict[str, Any], change: dict[str, Any], code: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in {**base, **change}.items() if v is not DROP}
    (directory / "config.json").write_text(json.dumps(config))
    if code:
        for name, text in CUSTOM_CODE.items():
            (directory / name).write_text(text)
    return directory


# ----------------------------------------------------------------------------- nothing planned as another model

REFUSED: list[tuple[str, dict[str, Any], dict[str, Any], list[str]]] = [
    ("custom code without consent", CUSTOM, {}, ["model_type 'homemoe'", "auto_map", "--trust-remote-code",
                                                 "run that code on this machine"]),
    ("unknown type without consent", LLAMA, {"model_type": "olmo2", "architectures": DROP},
     ["model_type 'olmo2'", "does not know", "--trust-remote-code", "own code"]),
    ("known type naming custom code", LLAMA, {"auto_map": {"AutoModelForCausalLM": "modeling_x.X"}},
     ["model_type 'llama'", "modeling_x.X", "--trust-remote-code"]),
    ("the issue's Gemma-3 decoder with MoE MLPs", LLAMA,
     {"model_type": "gemma3moe", "auto_map": {"AutoModelForCausalLM": "modeling_g.G"}, "n_routed_experts": 8,
      "num_experts_per_tok": 2}, ["model_type 'gemma3moe'", "--trust-remote-code", "run that code"]),
    ("experts on a dense type", LLAMA, {"n_routed_experts": 8, "num_experts_per_tok": 2},
     ["`n_routed_experts` 8", "'llama' model, which has no experts", "count a model it is not"]),
    ("an expert key Qwen3-MoE does not have", QWEN3_MOE, {"n_shared_experts": 2},
     ["`n_shared_experts` 2", "'qwen3_moe' model"]),
    ("an expert key Mixtral does not have", MIXTRAL, {"moe_layer_freq": 2}, ["`moe_layer_freq` 2", "'mixtral'"]),
    ("dense and sparse layers mixed", QWEN3_MOE, {"mlp_only_layers": [0]},
     ["`mlp_only_layers` is [0]", "dense and expert layers mixed"]),
    ("sparse every other layer", QWEN3_MOE, {"decoder_sparse_step": 2}, ["`decoder_sparse_step` is 2"]),
    ("top-k above the experts", MIXTRAL, {"num_experts_per_tok": 5}, ["`num_experts_per_tok` 5", "4 experts"]),
    ("zero experts per token", GPT_OSS, {"experts_per_token": 0}, ["`experts_per_token`", "is 0"]),
]


@pytest.mark.parametrize("case, base, change, words", REFUSED, ids=[c[0] for c in REFUSED])
def test_configs_planned_as_another_model_are_refused(tmp_path, case, base, change, words):
    directory = _model_dir(tmp_path / "model", base, change)
    assert_refused(run_cli("plan", "--model", str(directory), cwd=tmp_path, timeout=120), words)


def test_custom_expert_keys_are_refused_by_name_even_with_consent(tmp_path):
    directory = _model_dir(tmp_path / "model", CUSTOM, {"moe_layer_freq": 2, "first_k_dense_replace": 1}, code=True)
    assert_refused(run_cli("plan", "--model", str(directory), "--trust-remote-code", cwd=tmp_path, timeout=120),
                   ["`moe_layer_freq` 2", "llmwizard does not read", "'homemoe'"])


def test_custom_code_with_consent_is_counted_on_its_own_model_and_exported(tmp_path):
    """The model's code builds it on the meta device: the experts are counted, the leaf module is
    the code's own MoE block, and trust_remote_code reaches plan.yaml and the training entry."""
    directory = _model_dir(tmp_path / "model", CUSTOM, {}, code=True)
    spec = load_model_spec(str(directory), trust_remote_code=True)
    reference = count_on_meta(QWEN3_MOE)
    assert spec.count_method == "meta" and spec.total_params == reference["total"]
    assert spec.moe is not None and spec.moe.num_experts == 8 and spec.moe.experts_per_token == 2
    assert spec.moe.block_cls == "Qwen3MoeSparseMoeBlock"
    assert spec.active_params == spec.total_params - 2 * (8 - 2) * spec.moe.expert_params
    result = run_cli("export", "--model", str(directory), "--trust-remote-code", "--max-steps", "1",
                     "--out", str(tmp_path / "run"), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "trust_remote_code: true" in (tmp_path / "run" / "plan.yaml").read_text()
    assert "trust_remote_code: true" in (tmp_path / "run" / "sft_config.yaml").read_text()
    assert "runs its own code" in flat((tmp_path / "run" / "plan.yaml").read_text())


# ----------------------------------------------------------------------------- exact counts

@pytest.mark.parametrize("config", [QWEN3_MOE, MIXTRAL, GPT_OSS], ids=["qwen3_moe", "mixtral", "gpt_oss"])
def test_formula_and_meta_count_the_experts_alike(config):
    spec = spec_from_config("x", "local", None, config)
    exact = count_on_meta(config)
    assert (spec.total_params, spec.layer_params) == (exact["total"], exact["layer"])
    assert spec.moe is not None and spec.moe.block_cls == exact["moe"]["block_cls"]
    assert (spec.moe.num_experts, spec.moe.expert_params, spec.moe.router_params) == (
        exact["moe"]["num_experts"], exact["moe"]["expert_params"], exact["moe"]["router_params"])
    assert sorted(spec.moe.expert_parameters) == exact["moe"]["expert_parameters"]
    assert [lin.name for lin in spec.linears] == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_unbuildable_code_with_consent_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMWIZARD_CACHE", str(tmp_path / "cache"))
    directory = _model_dir(tmp_path / "model", CUSTOM, {})  # auto_map names files that are not there
    with pytest.raises(UserError, match="could not build it"):
        load_model_spec(str(directory), trust_remote_code=True)


# ----------------------------------------------------------------------------- memory, measured

def _bench(monkeypatch):
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "bench" / "memory_validation.py"
    spec_ = importlib.util.spec_from_file_location("memory_validation", path)
    module = importlib.util.module_from_spec(spec_)
    monkeypatch.setitem(sys.modules, "memory_validation", module)
    spec_.loader.exec_module(module)
    # LoRA on attention: the planner's default for MoE ("down_proj" would also match the experts' 3-D parameter)
    monkeypatch.setattr(module, "LORA_TARGETS", ["q_proj", "k_proj", "v_proj", "o_proj"])
    return module


# Real architectures at tiny widths where the experts' activations dominate the step.
TINY_MOE_BENCH = {
    "tiny-qwen3-moe": dict(model_type="qwen3_moe", hidden_size=256, intermediate_size=688, moe_intermediate_size=256,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                           vocab_size=1024, num_experts=64, num_experts_per_tok=8, tie_word_embeddings=False,
                           max_position_embeddings=4096),
    "tiny-mixtral": dict(model_type="mixtral", hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=4096, num_local_experts=8,
                         num_experts_per_tok=2, tie_word_embeddings=False, max_position_embeddings=4096),
}


@pytest.mark.parametrize("model, method, checkpointing", [
    ("tiny-qwen3-moe", "lora", False), ("tiny-qwen3-moe", "full", False), ("tiny-qwen3-moe", "lora", True),
    ("tiny-mixtral", "lora", False)])
def test_moe_estimate_matches_a_fake_tensor_measurement(monkeypatch, model, method, checkpointing):
    """Two real training steps of transformers' MoE blocks (grouped GEMM experts) on fake tensors."""
    bench = _bench(monkeypatch)
    monkeypatch.setitem(bench.MODELS, model, TINY_MOE_BENCH[model])
    case = bench.Case(model, method, seq=1024, batch=4, checkpointing=checkpointing, lora_dropout=0.0,
                      precision="pure_bf16" if method == "full" else "bf16")  # grouped_mm takes bf16 weights
    measured, estimated, _ = bench.compare(case)
    assert measured > 100 * 2**20
    assert estimated == pytest.approx(measured, rel=0.05)


def test_without_the_moe_terms_the_estimate_misses_the_routed_tokens(monkeypatch):
    """The routed tokens' copies are what a dense reading of the model leaves out (-23% here)."""
    from llmwizard.autotune import activations

    bench = _bench(monkeypatch)
    monkeypatch.setitem(bench.MODELS, "tiny-qwen3-moe", TINY_MOE_BENCH["tiny-qwen3-moe"])
    case = bench.Case("tiny-qwen3-moe", "lora", seq=1024, batch=4, checkpointing=False, lora_dropout=0.0)
    measured, _, _ = bench.compare(case)
    monkeypatch.setattr(activations, "moe_token_bytes", lambda model, setup: 0.0)
    monkeypatch.setattr(activations, "moe_backward_bytes", lambda model, setup: 0.0)
    _, without, _ = bench.compare(case)
    assert without < 0.85 * measured
