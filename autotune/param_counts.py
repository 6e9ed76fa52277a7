"""Exact parameter counts of a model from its config.json, without its weights.

Two ways, held equal by the tests for every catalog architecture: building the model on the meta
device with transformers (`count_on_meta`, imports torch; cached in the user cache per config.json
and transformers version), and the analytic formula (`spec_from_config`, no torch), which is also
the fallback for configs transformers cannot build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from importlib import metadata
from typing import Any

from llmwizard.autotune.schema import ModelSource
from llmwizard.autotune.embedded import cache_root
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.model_types import Linear, ModelSpec, VisionSpec


def cached_meta_counts(raw: bytes, config: dict[str, Any]) -> dict[str, Any] | None:
    """Meta-device counts for this config.json, computed once and kept in the user cache."""
    try:
        version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None
    key = hashlib.sha256(raw + b"\0transformers=" + version.encode()).hexdigest()[:24]
    cache_file = cache_root() / "specs" / f"{key}.json"
    try:
        cached = json.loads(cache_file.read_text())
        return cached.get("exact")
    except (OSError, ValueError, AttributeError):
        pass
    try:
        counts: dict[str, Any] | None = count_on_meta(config)
    except Exception as exc:  # noqa: BLE001 (unknown or remote-code architectures keep the formula)
        counts = None
        note = f"{type(exc).__name__}: {exc}"[:300]
    else:
        note = ""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"exact": counts, "transformers": version, "error": note}, indent=1))
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return counts


def with_counts(spec: ModelSpec, exact: dict[str, Any]) -> ModelSpec:
    """Replace the formula's counts and module facts with those read off the real model."""
    spec.embedding_params = exact["embedding"]
    spec.lm_head_params = exact["lm_head"]
    spec.layer_params = exact["layer"]
    spec.other_params = exact["other"]
    spec.vision_params = exact["vision"]
    spec.total_params = exact["total"]
    spec.layer_cls = exact["layer_cls"]
    spec.wrap_classes = list(exact["wrap_classes"])
    spec.architecture = exact["architecture"]
    linears = [Linear(n, i, o) for n, i, o in exact["linears"]]
    if sorted(linears, key=repr) != sorted(spec.linears, key=repr):  # else keep the formula's reading order
        spec.linears = linears
    spec.count_method = "meta"
    return spec


def count_on_meta(config: dict[str, Any]) -> dict[str, Any]:
    """Build the model from its config on the meta device (no weights) and count by part.

    Imports torch and transformers: the catalog build and the first plan for a new config only.
    """
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    settings = dict(config)
    model_type = settings.pop("model_type")
    hf_config = transformers.AutoConfig.for_model(model_type, **settings)
    archs = config.get("architectures") or []
    model_cls = getattr(transformers, archs[0], None) if archs else None
    with torch.device("meta"):
        if model_cls is not None:
            model = model_cls._from_config(hf_config)
        else:
            try:
                model = transformers.AutoModelForCausalLM.from_config(hf_config)
            except ValueError:
                model = transformers.AutoModelForImageTextToText.from_config(hf_config)
    params = dict(model.named_parameters())  # tied weights appear once
    total = sum(p.numel() for p in params.values())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    lm_head = 0 if head is None or head.weight is embed else sum(p.numel() for p in head.parameters())
    no_split = set(getattr(model, "_no_split_modules", None) or [])
    present = {type(m).__name__ for m in model.modules()}
    decoder = sorted(c for c in no_split & present if c.endswith("DecoderLayer"))
    if len(decoder) != 1:
        raise ValueError(f"cannot tell the decoder layer among {sorted(no_split)}")
    layer_cls = decoder[0]
    layers = [m for m in model.modules() if type(m).__name__ == layer_cls]
    layer = sum(p.numel() for p in layers[0].parameters())
    vision = sum(p.numel() for n, p in params.items() if _VISION_PARAM.search(n))
    linears = [[n.rsplit(".", 1)[-1], m.in_features, m.out_features]
               for n, m in layers[0].named_modules() if isinstance(m, torch.nn.Linear)]
    return {
        "total": total, "embedding": embed.numel(), "lm_head": lm_head, "layer": layer,
        "other": total - embed.numel() - lm_head - len(layers) * layer, "vision": vision,
        "num_layers": len(layers), "layer_cls": layer_cls,
        "wrap_classes": [layer_cls] + sorted(no_split & present - {layer_cls}),
        "architecture": type(model).__name__, "linears": linears,
    }


_VISION_PARAM = re.compile(r"(^|\.)(visual|vision_tower|multi_modal_projector)\.")


# ----------------------------------------------------------------------------- analytic formula

# Defaults of the transformers config classes (configuration_<type>.py, 5.23) for keys a
# config.json may leave out: gemma-3-4b-it's text_config gives no vocab, heads or head_dim.
_TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"vocab_size": 32000, "max_position_embeddings": 2048, "tie_word_embeddings": False},
    "mistral": {"vocab_size": 32000, "num_key_value_heads": 8, "max_position_embeddings": 131072,
                "tie_word_embeddings": False},
    "qwen2": {"vocab_size": 151936, "max_position_embeddings": 32768, "tie_word_embeddings": False},
    "qwen2_5_vl_text": {"vocab_size": 152064, "max_position_embeddings": 32768},
    "gemma": {"vocab_size": 256000, "head_dim": 256, "max_position_embeddings": 8192, "tie_word_embeddings": True},
    "gemma2": {"vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
               "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
               "max_position_embeddings": 8192, "tie_word_embeddings": True},
    "gemma3_text": {"vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                    "max_position_embeddings": 131072, "tie_word_embeddings": True},
    "phi3": {"vocab_size": 32064, "max_position_embeddings": 4096, "tie_word_embeddings": False},
}
_VISION_DEFAULTS: dict[str, dict[str, Any]] = {
    "siglip_vision_model": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                            "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 16,
                            "vision_use_head": True},
    "qwen2_5_vl": {"depth": 32, "hidden_size": 3584, "intermediate_size": 3420, "in_channels": 3, "patch_size": 14,
                   "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 3584},
}
# Multimodal wrappers: the text config type, the tie default, the vision tower's module path.
_MULTIMODAL = {
    "gemma3": ("gemma3_text", True, "model.vision_tower"),
    "qwen2_5_vl": ("qwen2_5_vl_text", False, "model.visual"),
}
_LAYER_CLASSES = {
    "llama": "LlamaDecoderLayer", "mistral": "MistralDecoderLayer", "qwen2": "Qwen2DecoderLayer",
    "gemma": "GemmaDecoderLayer", "gemma2": "Gemma2DecoderLayer", "gemma3_text": "Gemma3DecoderLayer",
    "phi3": "Phi3DecoderLayer", "qwen2_5_vl_text": "Qwen2_5_VLDecoderLayer",
}
_VISION_BLOCKS = {"gemma3": ["SiglipEncoderLayer", "SiglipVisionEmbeddings"],
                  "qwen2_5_vl": ["Qwen2_5_VLVisionBlock"]}


def spec_from_config(name: str, source: ModelSource, path: str | None, config: dict[str, Any]) -> ModelSpec:
    """Dimensions and analytic parameter counts from a config.json (no torch).

    Per-architecture module layouts follow transformers' modeling_<type>.py: which projections
    carry a bias, how many norms a layer has, Phi-3's fused qkv_proj and gate_up_proj.
    """
    outer_type = str(config.get("model_type", "llama"))
    multimodal = _MULTIMODAL.get(outer_type)
    if multimodal:
        text = {**{k: v for k, v in config.items() if k not in ("text_config", "vision_config")},
                **(config.get("text_config") or {})}
        text_type = str((config.get("text_config") or {}).get("model_type") or multimodal[0])
    else:
        text, text_type = config, outer_type
    text = {**_TEXT_DEFAULTS.get(text_type, {}), **{k: v for k, v in text.items() if v is not None}}
    try:
        hidden = int(text["hidden_size"])
        inter = int(text["intermediate_size"])
        layers = int(text["num_hidden_layers"])
        heads = int(text["num_attention_heads"])
        vocab = int(text["vocab_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"Model config for {name} lacks {exc}.", title="Model",
                        fix="llmwizard plans decoder-only transformers with a standard config.json.") from None
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    if "tie_word_embeddings" in config:
        tied = bool(config["tie_word_embeddings"])
    elif multimodal:
        tied = bool((config.get("text_config") or {}).get("tie_word_embeddings", multimodal[1]))
    else:
        tied = bool(text.get("tie_word_embeddings", True))
    linears, layer = _decoder_layer(text_type, text, hidden, inter, heads, kv_heads, head_dim)
    vision = _vision_params(outer_type, config, hidden) if multimodal else 0
    embedding = vocab * hidden
    lm_head = 0 if tied else vocab * hidden
    other = hidden + vision  # final norm (+ vision tower and projector)
    layer_cls = _LAYER_CLASSES.get(text_type, f"{text_type.title().replace('_', '')}DecoderLayer")
    return ModelSpec(
        name=name, source=source, path=path, model_type=outer_type, layer_cls=layer_cls,
        hidden_size=hidden, intermediate_size=inter, num_layers=layers, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim, vocab_size=vocab,
        max_positions=int(text.get("max_position_embeddings") or 2048), tie_embeddings=tied,
        embedding_params=embedding, lm_head_params=lm_head, layer_params=layer, other_params=other,
        total_params=embedding + lm_head + layers * layer + other, linears=linears,
        architecture=str((config.get("architectures") or [""])[0]),
        wrap_classes=[layer_cls] + _VISION_BLOCKS.get(outer_type, []), vision_params=vision,
        lora_exclude_modules=rf"{re.escape(multimodal[2])}\..*" if multimodal else None,
        vision=_vision_spec(outer_type, config, hidden) if multimodal else None,
    )


def _vision_spec(outer_type: str, config: dict[str, Any], text_hidden: int) -> VisionSpec:
    """The vision tower's dimensions, with the transformers defaults for keys a config leaves out."""
    if outer_type == "gemma3":
        v = {**_VISION_DEFAULTS["siglip_vision_model"], **(config.get("vision_config") or {})}
        return VisionSpec(kind="siglip", hidden_size=int(v["hidden_size"]),
                          intermediate_size=int(v["intermediate_size"]), num_layers=int(v["num_hidden_layers"]),
                          num_heads=int(v["num_attention_heads"]), patch_size=int(v["patch_size"]),
                          out_hidden_size=text_hidden, image_size=int(v["image_size"]),
                          tokens_per_image=int(config.get("mm_tokens_per_image") or 256))
    v = {**_VISION_DEFAULTS["qwen2_5_vl"], **(config.get("vision_config") or {})}
    return VisionSpec(kind="qwen2_5_vl", hidden_size=int(v["hidden_size"]),
                      intermediate_size=int(v["intermediate_size"]), num_layers=int(v["depth"]),
                      num_heads=int(v.get("num_heads") or 16), patch_size=int(v["patch_size"]),
                      merge_size=int(v["spatial_merge_size"]), temporal_patch_size=int(v["temporal_patch_size"]),
                      out_hidden_size=int(v["out_hidden_size"]), window_size=int(v.get("window_size") or 112),
                      full_attention_blocks=len(v.get("fullatt_block_indexes") or [7, 15, 23, 31]))


def _decoder_layer(text_type: str, text: dict[str, Any], hidden: int, inter: int, heads: int,
                   kv_heads: int, head_dim: int) -> tuple[list[Linear], int]:
    """The linears of one decoder layer and its parameter count (weights, biases, norms)."""
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    if text_type == "phi3":  # modeling_phi3: fused projections, no biases
        linears = [Linear("qkv_proj", hidden, q_out + 2 * kv_out), Linear("o_proj", q_out, hidden),
                   Linear("gate_up_proj", hidden, 2 * inter), Linear("down_proj", inter, hidden)]
        return linears, sum(lin.d_in * lin.d_out for lin in linears) + 2 * hidden
    linears = [Linear("q_proj", hidden, q_out), Linear("k_proj", hidden, kv_out), Linear("v_proj", hidden, kv_out),
               Linear("o_proj", q_out, hidden), Linear("gate_proj", hidden, inter), Linear("up_proj", hidden, inter),
               Linear("down_proj", inter, hidden)]
    params = sum(lin.d_in * lin.d_out for lin in linears)
    if text_type in ("qwen2", "qwen2_5_vl_text"):  # q, k, v always carry a bias; o_proj none
        params += q_out + 2 * kv_out
    elif text_type != "mistral" and text.get("attention_bias"):  # llama, gemma*: q, k, v and o
        params += q_out + 2 * kv_out + hidden
    if text_type not in ("mistral", "qwen2", "qwen2_5_vl_text", "phi3") and text.get("mlp_bias"):
        params += 2 * inter + hidden
    norms = {"gemma2": 4 * hidden, "gemma3_text": 4 * hidden + 2 * head_dim}  # + q_norm, k_norm
    return linears, params + norms.get(text_type, 2 * hidden)


def _vision_params(outer_type: str, config: dict[str, Any], text_hidden: int) -> int:
    """Vision tower + projector parameters, from modeling_siglip / modeling_qwen2_5_vl."""
    if outer_type == "gemma3":
        v = {**_VISION_DEFAULTS["siglip_vision_model"], **(config.get("vision_config") or {})}
        h, i, n = int(v["hidden_size"]), int(v["intermediate_size"]), int(v["num_hidden_layers"])
        patch, channels = int(v["patch_size"]), int(v["num_channels"])
        embeddings = channels * patch * patch * h + h + (int(v["image_size"]) // patch) ** 2 * h
        layer = 2 * h + 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h)  # LayerNorms, attention, MLP
        head = (h + 4 * h * h + 4 * h + 2 * h + h * i + i + i * h + h) if v.get("vision_use_head") else 0
        projector = h * text_hidden + h  # mm_input_projection_weight + mm_soft_emb_norm
        return embeddings + n * layer + 2 * h + head + projector
    v = {**_VISION_DEFAULTS["qwen2_5_vl"], **(config.get("vision_config") or {})}
    h, i, depth = int(v["hidden_size"]), int(v["intermediate_size"]), int(v["depth"])
    channels = int(v["in_channels"])  # transformers reads in_channels; hub configs' in_chans is unused
    patch_embed = channels * int(v["temporal_patch_size"]) * int(v["patch_size"]) ** 2 * h  # Conv3d, no bias
    block = 2 * h + (h * 3 * h + 3 * h) + (h * h + h) + 2 * (h * i + i) + (i * h + h)
    merged = h * int(v["spatial_merge_size"]) ** 2
    out = int(v["out_hidden_size"])
    merger = h + (merged * merged + merged) + (merged * out + out)
    return patch_embed + depth * block + merger
