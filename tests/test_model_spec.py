"""Model specs: catalog facts, exact counts (formula == meta device == PEFT), name resolution.

Nothing here downloads: conftest sets HF_HUB_OFFLINE and every model is built on the meta device.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest

from llmwizard.autotune.model import model_spec
from llmwizard.autotune.model import param_counts
from llmwizard.autotune.model.param_counts import count_on_meta
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.model.model_spec import (
    catalog_names,
    load_model_spec,
    search_catalog,
    spec_from_config,
)

CATALOG = json.loads(model_spec.CATALOG_PATH.read_text())["models"]
BY_NAME = {entry["name"]: entry for entry in CATALOG}

REQUIRED = [
    "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.3-70b",
    "gemma-2b", "gemma-7b", "gemma-2-2b", "gemma-2-9b", "gemma-2-27b",
    "gemma-3-1b", "gemma-3-4b", "gemma-3-12b", "gemma-3-27b",
    "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b",
    "qwen2.5-vl-3b", "qwen2.5-vl-7b", "mistral-7b", "phi-3-mini", "phi-4-mini",
    "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b", "qwen3-30b-a3b", "qwen3-235b-a22b",
    "gpt-oss-20b", "gpt-oss-120b", "mixtral-8x7b", "mistral-nemo-12b", "ministral-8b", "mistral-small-24b",
    "gemma-3-270m",
]


def _parts(spec: model_spec.ModelSpec) -> dict[str, int]:
    return {"total": spec.total_params, "embedding": spec.embedding_params, "lm_head": spec.lm_head_params,
            "layer": spec.layer_params, "other": spec.other_params, "vision": spec.vision_params}


def _exact_parts(exact: dict) -> dict[str, int]:
    return {key: exact[key] for key in ("total", "embedding", "lm_head", "layer", "other", "vision")}


def test_catalog_has_every_required_model_with_sources():
    assert set(REQUIRED) <= set(catalog_names())
    for entry in CATALOG:
        assert entry["hub_id"].count("/") == 1
        assert entry["source"] and entry["published"]
        assert entry["exact"]["total"] > 0


@pytest.mark.parametrize("name", REQUIRED)
def test_formula_equals_meta_count_for_catalog_model(name):
    """The analytic formula reproduces, part by part, what the meta-device build counted."""
    entry = BY_NAME[name]
    spec = spec_from_config(entry["hub_id"], "catalog", None, entry["config"])
    exact = entry["exact"]
    assert _parts(spec) == _exact_parts(exact)
    assert spec.layer_cls == exact["layer_cls"]
    assert set(spec.wrap_classes) == set(exact["wrap_classes"])
    assert sorted((lin.name, lin.d_in, lin.d_out) for lin in spec.linears) == sorted(map(tuple, exact["linears"]))
    assert spec.num_layers == exact["num_layers"]


def test_stored_counts_are_what_transformers_builds_now():
    """The catalog's counts are current: rebuild every model on the meta device (seconds, no weights)."""
    for entry in CATALOG:
        assert count_on_meta(entry["config"]) == entry["exact"], entry["name"]


@pytest.mark.parametrize("name", REQUIRED)
def test_totals_agree_with_published_counts(name):
    """Cross-check of the config facts: the published figure is rounded, hence the 1% tolerance
    (Qwen2.5-32B's model card says 32.5B for 32.76B; see its catalog note), or half the last digit the
    figure gives (Qwen3-1.7B's "1.7B" is 1.72B; its card's 1.4B non-embedding agrees)."""
    entry = BY_NAME[name]
    figure = re.match(r"([\d.]+)B", entry["published"]).group(1)
    published = float(figure) * 1e9
    last_digit = 10 ** -len(figure.partition(".")[2]) * 1e9
    assert abs(entry["exact"]["total"] - published) <= max(0.01 * published, last_digit / 2)


def test_parts_add_up_and_tied_heads_count_zero():
    for entry in CATALOG:
        exact = entry["exact"]
        assert exact["embedding"] + exact["lm_head"] + exact["num_layers"] * exact["layer"] + exact["other"] \
            == exact["total"]
    assert BY_NAME["llama-3.2-1b"]["exact"]["lm_head"] == 0
    assert BY_NAME["llama-3.1-8b"]["exact"]["lm_head"] == BY_NAME["llama-3.1-8b"]["exact"]["embedding"]


def test_phi3_uses_its_fused_projection_names():
    spec = load_model_spec("phi-3-mini")
    assert set(spec.linear_names) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    qkv = next(lin for lin in spec.linears if lin.name == "qkv_proj")
    assert qkv.d_out == (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim


def test_multimodal_counts_vision_in_other_and_wraps_its_blocks():
    for name, block in [("qwen2.5-vl-7b", "Qwen2_5_VLVisionBlock"), ("gemma-3-4b", "SiglipEncoderLayer")]:
        spec = load_model_spec(name)
        assert spec.vision_params > 0
        assert spec.other_params == spec.vision_params + spec.hidden_size  # + final norm
        assert spec.total_params == (spec.embedding_params + spec.lm_head_params
                                     + spec.num_layers * spec.layer_params + spec.other_params)
        assert spec.layer_cls.endswith("DecoderLayer") and block in spec.wrap_classes
        assert spec.lora_exclude_modules


# ----------------------------------------------------------------------------- small instances

def _shrink(config: dict, **text_extra) -> dict:
    """The catalog config at toy width: same architecture, 2 layers, 64 wide."""
    small = copy.deepcopy(config)
    text = small["text_config"] if "text_config" in small else small
    heads = int(text.get("num_attention_heads", 8))
    kv = int(text.get("num_key_value_heads", 4))
    text.update(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=1 if kv == 1 else 4 if kv == heads else 2, vocab_size=256,
                pad_token_id=0)  # Phi3Config's default pad id 32000 would not fit
    if "head_dim" in text:
        text["head_dim"] = 24  # differs from hidden / heads: exercises the explicit head_dim path
    text.update(text_extra)
    if small["model_type"] == "qwen2_5_vl":
        small["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
        small["vision_config"].update(depth=2, hidden_size=32, intermediate_size=48, num_heads=4,
                                      out_hidden_size=64, fullatt_block_indexes=[1])
    if small["model_type"] == "gemma3":
        small["mm_tokens_per_image"] = 4
        small["vision_config"].update(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, image_size=28, patch_size=14)
    return small


SMALL = {name: _shrink(BY_NAME[name]["config"]) for name in REQUIRED}
SMALL["llama-biases"] = _shrink(BY_NAME["llama-3.2-1b"]["config"], attention_bias=True, mlp_bias=True)
SMALL["gemma-bias-untied"] = _shrink(BY_NAME["gemma-2b"]["config"], attention_bias=True, tie_word_embeddings=False)
SMALL["gemma-3-4b-head"] = copy.deepcopy(SMALL["gemma-3-4b"])
SMALL["gemma-3-4b-head"]["vision_config"]["vision_use_head"] = True
SMALL["qwen2.5-vl-3b-untied"] = {**SMALL["qwen2.5-vl-3b"], "tie_word_embeddings": False}


def _build(config: dict):
    import torch
    import transformers

    settings = dict(config)
    hf_config = transformers.AutoConfig.for_model(settings.pop("model_type"), **settings)
    with torch.device("meta"):
        return getattr(transformers, config["architectures"][0])._from_config(hf_config)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_instance_formula_meta_and_peft_agree(name):
    """Formula == meta count, and lora_params == PEFT's own trainable count, for all targets and a subset."""
    from peft import LoraConfig, get_peft_model

    config = SMALL[name]
    spec = spec_from_config(name, "local", None, config)
    exact = count_on_meta(config)
    assert _parts(spec) == _exact_parts(exact)
    assert sorted((lin.name, lin.d_in, lin.d_out) for lin in spec.linears) == sorted(map(tuple, exact["linears"]))

    subset = spec.linear_names[:2]
    for r, targets in [(4, None), (2, subset)]:
        lora = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets or spec.linear_names,
                          exclude_modules=spec.lora_exclude_modules)
        trainable, _ = get_peft_model(_build(config), lora).get_nb_trainable_parameters()
        assert trainable == spec.lora_params(r, targets)


@pytest.mark.parametrize("name", ["qwen2.5-vl-3b", "gemma-3-4b", "phi-4-mini", "llama-3.2-1b"])
def test_exported_target_modules_adapt_exactly_the_counted_linears_through_trl(name):
    """What the exporter writes as lora_target_modules, read back by TRL's ModelConfig and PEFT."""
    from peft import get_peft_model
    from trl import ModelConfig, get_peft_config

    spec = spec_from_config(name, "local", None, SMALL[name])
    for targets in (None, spec.linear_names[:1], spec.linear_names[1:3]):
        model_args = ModelConfig(use_peft=True, lora_r=4, lora_alpha=8,
                                 lora_target_modules=spec.lora_target_modules(targets))
        trainable, _ = get_peft_model(_build(SMALL[name]), get_peft_config(model_args)).get_nb_trainable_parameters()
        assert trainable == spec.lora_params(4, targets), targets


@pytest.mark.parametrize("name", ["qwen2.5-vl-3b", "gemma-3-4b"])
def test_without_the_exclusion_peft_would_adapt_the_vision_tower(name):
    """Why lora_exclude_modules exists: plain names also match the vision tower's linears."""
    from peft import LoraConfig, get_peft_model

    spec = spec_from_config(name, "local", None, SMALL[name])
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=spec.linear_names)
    trainable, _ = get_peft_model(_build(SMALL[name]), lora).get_nb_trainable_parameters()
    assert trainable > spec.lora_params(4)


def test_formula_defaults_are_the_transformers_config_defaults():
    from transformers import AutoConfig

    for model_type, defaults in {**param_counts._TEXT_DEFAULTS, **param_counts._VISION_DEFAULTS}.items():
        hf_type = "qwen2_5_vl_vision" if model_type == "qwen2_5_vl" else model_type
        config = AutoConfig.for_model(hf_type)
        for key, value in defaults.items():
            assert getattr(config, key) == value, (model_type, key)
    for model_type, (text_type, tied, _) in param_counts._MULTIMODAL.items():
        config = AutoConfig.for_model(model_type)
        assert config.tie_word_embeddings == tied and config.get_text_config().model_type == text_type


def test_catalog_keys_are_unambiguous():
    seen: dict[str, str] = {}
    for entry in CATALOG:
        for key in (entry["name"], entry["hub_id"], *entry["hub_ids"], *entry["aliases"]):
            assert seen.setdefault(model_spec._catalog_key(key), entry["name"]) == entry["name"], key


# ----------------------------------------------------------------------------- names

def test_names_aliases_and_hub_ids_resolve_case_insensitively():
    assert load_model_spec("LLaMA-3.1-8B").catalog_name == "llama-3.1-8b"
    assert load_model_spec("llama3.1-8b-instruct").name == "meta-llama/Llama-3.1-8B-Instruct"
    base = load_model_spec("Meta-Llama/llama-3.1-8b")
    assert (base.source, base.name, base.catalog_name) == ("catalog", "meta-llama/Llama-3.1-8B", "llama-3.1-8b")
    assert base.path is None and base.count_method == "meta"


def test_catalog_load_imports_no_torch():
    code = ("import sys; from llmwizard.autotune.model.model_spec import load_model_spec; "
            "s = load_model_spec('qwen2.5-vl-7b'); assert s.total_params > 8e9; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_name_suggests_close_catalog_names():
    with pytest.raises(UserError, match=r"did you mean llama-3\.1-8b") as info:
        load_model_spec("llama-3.1-8bb")
    assert info.value.fix


def test_unknown_hub_id_offline_is_a_user_error():
    with pytest.raises(UserError, match="hub is unreachable.*HF_HUB_OFFLINE") as info:
        load_model_spec("nobody-here/not-a-model")
    assert "not in the catalog" in info.value.message and info.value.fix


def test_search_catalog_for_completion():
    names = [match["name"] for match in search_catalog("gemma-3")]
    assert names == ["gemma-3-270m", "gemma-3-1b", "gemma-3-4b", "gemma-3-12b", "gemma-3-27b"]
    assert {m["name"] for m in search_catalog("QWEN/qwen2.5-vl")} == {"qwen2.5-vl-3b", "qwen2.5-vl-7b"}
    assert search_catalog("phi")[0]["layer_cls"] == "Phi3DecoderLayer"
    assert len(search_catalog("", limit=100)) == len(catalog_names())


def test_embedded_default_still_loads_with_exact_counts():
    spec = load_model_spec(None)
    assert spec.source == "embedded" and spec.layer_cls == "LlamaDecoderLayer"
    assert spec.total_params == count_on_meta(model_spec.MODEL_CONFIG)["total"]


def test_local_directory_is_counted_once_then_cached(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLMWIZARD_CACHE", str(cache))
    model_dir = tmp_path / "my-vl"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(SMALL["qwen2.5-vl-3b"]))
    spec = load_model_spec(str(model_dir))
    assert (spec.source, spec.count_method, spec.path) == ("local", "meta", str(model_dir.resolve()))
    assert spec.wrap_classes == ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"]
    assert len(list((cache / "specs").glob("*.json"))) == 1
    code = ("import sys; from llmwizard.autotune.model.model_spec import load_model_spec; "
            f"s = load_model_spec({str(model_dir)!r}); "
            "print(s.count_method, s.total_params, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "LLMWIZARD_CACHE": str(cache)})
    assert out.stdout.split() == ["meta", str(spec.total_params), "False"]


def test_unbuildable_local_config_is_refused_not_counted_as_a_llama(tmp_path, monkeypatch):
    """No formula stands in for a model nothing can build: refused without consent and with it."""
    monkeypatch.setenv("LLMWIZARD_CACHE", str(tmp_path / "cache"))
    config = {**SMALL["llama-3.2-1b"], "model_type": "homegrown", "architectures": ["HomegrownForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="--trust-remote-code"):
        load_model_spec(str(tmp_path))
    with pytest.raises(UserError, match="could not build it"):
        load_model_spec(str(tmp_path), trust_remote_code=True)


def test_local_directory_without_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_model_spec(str(tmp_path))


def test_hub_id_resolves_from_the_local_hub_cache_without_network(tmp_path):
    """A hub id whose config.json is already in the HF cache loads offline, counted on meta."""
    snapshot = tmp_path / "hub" / "models--someorg--tiny-phi" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(SMALL["phi-4-mini"]))
    (tmp_path / "hub" / "models--someorg--tiny-phi" / "refs").mkdir()
    (tmp_path / "hub" / "models--someorg--tiny-phi" / "refs" / "main").write_text("0123abcd")
    code = ("from llmwizard.autotune.model.model_spec import load_model_spec; s = load_model_spec('someorg/tiny-phi'); "
            "print(s.source, s.name, s.path, s.count_method, s.layer_cls, s.total_params)")
    env = {**__import__("os").environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "LLMWIZARD_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    expected = spec_from_config("x", "hub", None, SMALL["phi-4-mini"]).total_params
    assert out.stdout.split() == ["hub", "someorg/tiny-phi", "None", "meta", "Phi3DecoderLayer", str(expected)]
