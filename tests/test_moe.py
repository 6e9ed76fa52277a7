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
from llmwizard.autotune.model.model_spec import load_model_spec
from llmwizard.autotune.model.param_counts import count_on_meta, spec_from_config
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
    "tiny-gpt-oss": dict(model_type="gpt_oss", hidden_size=256, intermediate_size=256, head_dim=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=1024,
                         attention_bias=True, num_local_experts=8, num_experts_per_tok=4, tie_word_embeddings=False,
                         max_position_embeddings=4096, sliding_window=128,
                         layer_types=["sliding_attention", "full_attention"]),
}


@pytest.mark.parametrize("model, method, checkpointing, within", [
    ("tiny-qwen3-moe", "lora", False, 0.05), ("tiny-qwen3-moe", "full", False, 0.05),
    ("tiny-qwen3-moe", "lora", True, 0.05), ("tiny-mixtral", "lora", False, 0.05),
    ("tiny-gpt-oss", "lora", False, 0.05)])
def test_moe_estimate_matches_a_fake_tensor_measurement(monkeypatch, model, method, checkpointing, within):
    """Two real training steps of transformers' MoE blocks (grouped GEMM experts) on fake tensors
    (gpt-oss with its eager attention and sinks: it has no SDPA path)."""
    bench = _bench(monkeypatch)
    monkeypatch.setitem(bench.MODELS, model, TINY_MOE_BENCH[model])
    case = bench.Case(model, method, seq=1024, batch=4, checkpointing=checkpointing, lora_dropout=0.0,
                      precision="pure_bf16" if method == "full" else "bf16",  # grouped_mm takes bf16 weights
                      attention="eager" if model == "tiny-gpt-oss" else "sdpa")
    measured, estimated, _ = bench.compare(case)
    assert measured > 100 * 2**20
    assert estimated == pytest.approx(measured, rel=within)


def test_without_the_moe_terms_the_estimate_misses_the_routed_tokens(monkeypatch):
    """The routed tokens' copies are what a dense reading of the model leaves out (-23% here)."""
    from llmwizard.autotune.memory import activations

    bench = _bench(monkeypatch)
    monkeypatch.setitem(bench.MODELS, "tiny-qwen3-moe", TINY_MOE_BENCH["tiny-qwen3-moe"])
    case = bench.Case("tiny-qwen3-moe", "lora", seq=1024, batch=4, checkpointing=False, lora_dropout=0.0)
    measured, _, _ = bench.compare(case)
    monkeypatch.setattr(activations, "moe_token_bytes", lambda model, setup: 0.0)
    monkeypatch.setattr(activations, "moe_backward_bytes", lambda model, setup: 0.0)
    _, without, _ = bench.compare(case)
    assert without < 0.85 * measured


# ----------------------------------------------------------------------------- the tiny MoE trains for real

def _moe_plan(strategy: str, method: str, **goals: Any):
    from llmwizard.autotune.data.dataset import profile_dataset
    from llmwizard.autotune.embedded import EMBEDDED_DATASET
    from llmwizard.autotune.embedded.moe import EMBEDDED_MOE_MODEL, ensure_moe_model
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.machine.hardware import detect
    from llmwizard.autotune.plan.planner import plan
    from llmwizard.autotune.data.tokens import counter_for
    from tests.tiny_models import LEARNING_RATE

    model_dir = ensure_moe_model()
    profile = profile_dataset(EMBEDDED_DATASET, counter_for(model_dir))
    wanted = Goals(strategy=strategy, launcher="accelerate", method=method, processes=2, max_steps=10,
                   checkpointing=False, eval_fraction=0.0, learning_rate=LEARNING_RATE[method], **goals)
    return plan(detect(), load_model_spec(EMBEDDED_MOE_MODEL), profile, wanted)


@pytest.mark.slow
@pytest.mark.parametrize("strategy, method, targets", [
    ("ddp", "lora", None), ("ddp", "lora", ["q_proj", "v_proj", "experts"]), ("ddp", "full", None),
    ("fsdp", "full", None), ("fsdp", "lora", None), ("zero2", "full", None), ("zero3", "full", None),
    ("zero3", "lora", None)],
    ids=["ddp-lora", "ddp-lora-experts", "ddp-full", "fsdp2-full", "fsdp2-lora", "zero2-full",
         "zero3-full-leaf-modules", "zero3-lora-leaf-modules"])
def test_tiny_moe_trains_under_every_strategy(tmp_path, strategy, method, targets):
    """embedded:tiny-moe on two CPU ranks: the strategy that really ran, a falling loss, and under
    ZeRO-3 the MoE block marked as a leaf module (without it the ranks hang gathering experts)."""
    from llmwizard.runner.export import export
    from tests.test_strategies import EXPECTED, stale_extension_build_lock
    from tests.tiny_models import assert_loss_falls, losses, run_launch_sh, strategy_ran

    plan = _moe_plan(strategy, method, **({"lora_targets": targets} if targets else {}))
    if targets:
        assert plan.lora is not None and plan.lora.target_parameters == ["mlp.experts.down_proj",
                                                                         "mlp.experts.gate_up_proj"]
        assert plan.lora.dropout == 0.0
    run_dir = tmp_path / "run"
    export(plan, run_dir)
    zero = strategy.startswith("zero")
    env = {"TORCH_EXTENSIONS_DIR": str(stale_extension_build_lock(tmp_path / "ext"))} if zero else {}
    result = run_launch_sh(run_dir, tmp_path, env=env, timeout=400)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert strategy_ran(log) == (EXPECTED[strategy], 2)
    assert_loss_falls(losses(run_dir))
    assert ("llmwizard: ZeRO-3 leaf modules: Qwen3MoeSparseMoeBlock" in log) == (strategy == "zero3")
    if targets:
        from safetensors.numpy import load_file

        saved = load_file(str(run_dir / "output" / "adapter_model.safetensors"))
        assert any("experts" in key for key in saved), sorted(saved)


# ----------------------------------------------------------------------------- LoRA targets and plans

@pytest.mark.parametrize("config", [QWEN3_MOE, MIXTRAL, GPT_OSS], ids=["qwen3_moe", "mixtral", "gpt_oss"])
def test_lora_counts_are_pefts_own_for_attention_and_experts(config):
    """The default (attention only) and `experts` (PEFT target_parameters on the fused weights)."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    spec = spec_from_config("x", "local", None, config)
    assert spec.moe is not None
    settings = {k: v for k, v in config.items() if k not in ("model_type", "quantization_config")}
    for targets, parameters in [(None, []), (["q_proj", "v_proj", "experts"], list(spec.moe.expert_parameters))]:
        with torch.device("meta"):
            hf_config = transformers.AutoConfig.for_model(config["model_type"], **settings)
            model = getattr(transformers, config["architectures"][0])._from_config(hf_config)
        modules = spec.lora_target_modules([t for t in targets or spec.linear_names if t != "experts"])
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=modules,
                          target_parameters=parameters or None)
        trainable, _ = get_peft_model(model, lora).get_nb_trainable_parameters()
        assert trainable == spec.lora_params(4, targets), targets


def test_plans_name_active_parameters_leaf_modules_and_expert_parallelism():
    from llmwizard.autotune.machine import hardware
    from llmwizard.autotune.data.dataset import profile_dataset
    from llmwizard.autotune.embedded import EMBEDDED_DATASET
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.plan.planner import plan

    from llmwizard.autotune.embedded.moe import ensure_moe_model
    from llmwizard.autotune.data.tokens import counter_for

    model = load_model_spec("qwen3-30b-a3b")
    profile = profile_dataset(EMBEDDED_DATASET, counter_for(ensure_moe_model()))
    zero3 = plan(hardware.from_spec("4xRTX4090"), model, profile, Goals(strategy="zero3"))
    words = flat(zero3.reasons["experts"])
    assert "30.53 B parameters, 3.35 B active per token" in words and "8 of 128 routed experts" in words
    assert "leaf module" in words and "Qwen3MoeSparseMoeBlock" in words
    assert "offers none" in words and "expert parallelism over 4 GPUs" in words
    assert zero3.lora is not None and zero3.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert "attention only on this Mixture-of-Experts model" in flat(zero3.reasons["lora"])
    ddp = plan(hardware.from_spec("8xH100-80GB"), model, profile, Goals(strategy="ddp", method="lora"))
    assert "GiB less per GPU" in ddp.reasons["experts"]
    oss = plan(hardware.from_spec("1xH100-80GB"), load_model_spec("gpt-oss-20b"), profile, Goals())
    assert "MXFP4 experts, dequantized to bf16" in flat(oss.reasons["experts"])
    # bf16 experts: the GPU holds 2 bytes per parameter (not MXFP4's ~0.53), and so does host RAM while loading
    assert oss.estimate.params >= 2 * oss.total_params and oss.estimate.host_ram >= 2 * oss.total_params


def test_dropout_with_expert_lora_is_refused(tmp_path):
    import yaml

    preset = tmp_path / "moe.yaml"
    preset.write_text(yaml.safe_dump({"method": "lora", "lora_targets": ["q_proj", "experts"],
                                      "lora_dropout": 0.1}))
    assert_refused(run_cli("plan", "--model", "embedded:tiny-moe", "--preset", str(preset), cwd=tmp_path),
                   ["lora_dropout 0.1", "`experts`", "ParamWrapper"])


def test_experts_target_on_a_dense_model_is_refused(tmp_path):
    import yaml

    preset = tmp_path / "dense.yaml"
    preset.write_text(yaml.safe_dump({"method": "lora", "lora_targets": ["q_proj", "experts"]}))
    assert_refused(run_cli("plan", "--preset", str(preset), "--method", "lora", cwd=tmp_path),
                   ["LoRA target `experts`", "has no experts"])


def test_mxfp4_experts_load_dequantized_for_training(tmp_path):
    """gpt-oss is released with MXFP4 experts, which do not train: the training entry asks
    transformers to dequantize them to bf16 (what the memory model and host-RAM check count)."""
    from llmwizard.runner.rank.patches import dequantized_for_training

    (tmp_path / "config.json").write_text(json.dumps(GPT_OSS))
    config = dequantized_for_training(str(tmp_path), {})["quantization_config"]
    assert type(config).__name__ == "Mxfp4Config" and config.dequantize is True
    assert dequantized_for_training(str(tmp_path), {"quantization_config": "qlora's"}) == {}
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_MOE))
    assert dequantized_for_training(str(tmp_path), {}) == {}
    spec = spec_from_config("gpt-oss", "local", None, GPT_OSS)
    assert spec.moe is not None and spec.moe.quantization == "mxfp4"
    assert spec.total_params == count_on_meta(GPT_OSS)["total"]  # the bf16 model, experts whole


# ----------------------------------------------------------------------------- hand edits and custom shapes

@pytest.fixture(scope="module")
def moe_run(tmp_path_factory) -> Path:
    """One exported LoRA-on-experts run of embedded:tiny-moe, copied per test."""
    import yaml

    root = tmp_path_factory.mktemp("moe-run")
    preset = root / "experts.yaml"
    preset.write_text(yaml.safe_dump({"method": "lora", "lora_targets": ["q_proj", "v_proj", "experts"]}))
    result = run_cli("export", "--model", "embedded:tiny-moe", "--preset", str(preset), "--max-steps", "1",
                     "--out", str(root / "run"), cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lora_target_parameters" in (root / "run" / "sft_config.yaml").read_text()
    return root / "run"


@pytest.mark.parametrize("change, words", [
    ({"target_parameters": ["mlp.experts.up_proj"]}, ["lora.target_parameters", "mlp.experts.up_proj",
                                                      "not the routed experts' fused weights"]),
    ({"dropout": 0.1}, ["lora.dropout", "0.1", "ParamWrapper"]),
], ids=["unknown expert parameter", "dropout with experts"])
def test_hand_edited_expert_lora_in_plan_yaml_is_refused(tmp_path, moe_run, change, words):
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(moe_run, run)
    data = yaml.safe_load((run / "plan.yaml").read_text())
    data["lora"].update(change)
    (run / "plan.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert_refused(run_cli("run", str(run), cwd=tmp_path, timeout=120), words)


def test_custom_experts_without_a_count_in_the_config_are_refused(tmp_path, monkeypatch):
    """The model's code makes experts (its class defaults) that config.json does not describe."""
    monkeypatch.setenv("LLMWIZARD_CACHE", str(tmp_path / "cache"))
    directory = _model_dir(tmp_path / "model", CUSTOM, {"num_experts": DROP, "num_experts_per_tok": DROP}, code=True)
    with pytest.raises(UserError, match="128 experts per layer .* no expert count"):
        load_model_spec(str(directory), trust_remote_code=True)


QWEN2_MOE: dict[str, Any] = {
    "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": 64, "intermediate_size": 128,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "num_experts": 8, "num_experts_per_tok": 2,
    "norm_topk_prob": False, "tie_word_embeddings": False,
}


def test_a_type_only_transformers_knows_is_counted_by_hand_with_consent(tmp_path, monkeypatch):
    """Qwen2-MoE (shared expert beside the routed ones), worked by hand: attention with q/k/v biases
    4,160 + 2,080 + 2,080 + 4,096; router 8 x 64; experts 8 x 3 x 64 x 32; shared expert 3 x 64 x 96
    and its gate 64; two norms 128: 80,704 per layer; 2 layers + untied embedding and head 2 x 19,200
    + final norm 64 = 199,872. Active: less 2 layers x 6 skipped experts x 6,144 = 126,144."""
    monkeypatch.setenv("LLMWIZARD_CACHE", str(tmp_path / "cache"))
    directory = _model_dir(tmp_path / "model", QWEN2_MOE, {})
    assert_refused(run_cli("plan", "--model", str(directory), cwd=tmp_path), ["model_type 'qwen2_moe'",
                                                                              "--trust-remote-code"])
    spec = load_model_spec(str(directory), trust_remote_code=True)
    assert (spec.total_params, spec.layer_params, spec.active_params) == (199_872, 80_704, 126_144)
    assert spec.moe is not None and spec.moe.shared_expert_params == 18_432 + 64
    assert spec.moe.block_cls == "Qwen2MoeSparseMoeBlock" and spec.moe.shared_intermediate_size == 96


def test_dense_and_expert_layers_mixed_are_refused_with_the_reason(tmp_path):
    """DeepSeek-V3's first_k_dense_replace: layers of two sizes, which per-layer counts cannot describe."""
    config = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 64,
              "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
              "num_key_value_heads": 4, "vocab_size": 300, "n_routed_experts": 8, "n_shared_experts": 1,
              "num_experts_per_tok": 2, "first_k_dense_replace": 1, "kv_lora_rank": 16, "q_lora_rank": 24,
              "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16, "n_group": 2, "topk_group": 1}
    directory = _model_dir(tmp_path / "model", config, {})
    assert_refused(run_cli("plan", "--model", str(directory), "--trust-remote-code", cwd=tmp_path,
                           env={"LLMWIZARD_CACHE": str(tmp_path / "cache")}),
                   ["could not build it", "differ in size", "dense and expert layers mixed"])
