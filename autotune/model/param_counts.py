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
from llmwizard.autotune.model.model_types import Linear, ModelSpec, MoESpec, VisionSpec


def meta_count_error(raw: bytes, code_from: str | None = None) -> str:
    """Why the meta count of this config.json failed, as cached_meta_counts recorded it ("" if it did not)."""
    try:
        version = metadata.version("transformers")
        trust = f"\0remote-code={code_from}".encode() if code_from else b""
        key = hashlib.sha256(raw + b"\0transformers=" + version.encode() + trust).hexdigest()[:24]
        return str(json.loads((cache_root() / "specs" / f"{key}.json").read_text()).get("error") or "")
    except (OSError, ValueError, AttributeError, metadata.PackageNotFoundError):
        return ""


def cached_meta_counts(raw: bytes, config: dict[str, Any], code_from: str | None = None) -> dict[str, Any] | None:
    """Meta-device counts for this config.json, computed once and kept in the user cache.

    `code_from` (a directory or hub id) is where the model's own code lives: given only with the
    user's consent (--trust-remote-code), and then that code builds the model."""
    try:
        version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None
    trust = f"\0remote-code={code_from}".encode() if code_from else b""
    key = hashlib.sha256(raw + b"\0transformers=" + version.encode() + trust).hexdigest()[:24]
    cache_file = cache_root() / "specs" / f"{key}.json"
    try:
        cached = json.loads(cache_file.read_text())
        return cached.get("exact")
    except (OSError, ValueError, AttributeError):
        pass
    try:
        counts: dict[str, Any] | None = count_on_meta(config, code_from)
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
    found = exact.get("moe")
    if found and spec.moe is None:  # the model's code has experts its config.json does not describe
        raise UserError(f"{spec.name}: its model has {found['num_experts']} experts per layer (in "
                        f"{found['block_cls']}), but config.json gives no expert count llmwizard reads "
                        "(num_experts, num_local_experts or n_routed_experts) nor how many each token is sent to "
                        "(num_experts_per_tok), so the active parameters and routed tokens would be guessed.",
                        title="Model config", fix=_CONFIG_FIX)
    if found:
        base = spec.moe
        spec.moe = MoESpec(
            kind=base.kind if base else spec.model_type, num_experts=found["num_experts"],
            experts_per_token=base.experts_per_token if base else 1,
            expert_intermediate_size=base.expert_intermediate_size if base else 0,
            expert_params=found["expert_params"], router_params=found["router_params"],
            shared_expert_params=found["shared_expert_params"], block_cls=found["block_cls"],
            shared_intermediate_size=base.shared_intermediate_size if base else 0,
            expert_parameters=tuple(found["expert_parameters"]), aux_loss=base.aux_loss if base else False,
            quantization=base.quantization if base else "")
    return spec


def count_on_meta(config: dict[str, Any], code_from: str | None = None) -> dict[str, Any]:
    """Build the model from its config on the meta device (no weights) and count by part.

    Imports torch and transformers: the catalog build and the first plan for a new config only.
    `code_from` (a model directory or hub id, given only with --trust-remote-code) builds the
    model with its own code (the config's auto_map). A quantization_config is left out: training
    dequantizes (gpt-oss's MXFP4 experts train in bf16), so the bf16 model is what is counted.
    """
    import logging
    import warnings

    # transformers' modeling code imports torchao (and DeepSpeed) when installed, and their start-up
    # warnings (a CUDA kernel that does not load here, a deprecated torch call) read like failures in
    # `llmwizard estimate`'s output. Warnings and log records below ERROR are held back during these
    # imports only; the model is then built with nothing held back.
    held_back = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch
            import transformers
            from transformers import modeling_utils  # noqa: F401  (the import that pulls those libraries in)
            from transformers.utils import logging as hf_logging
    finally:
        logging.disable(held_back)

    hf_logging.set_verbosity_error()
    settings = {k: v for k, v in config.items() if k != "quantization_config"}
    model_type = settings.pop("model_type")
    if code_from:
        hf_config = transformers.AutoConfig.from_pretrained(code_from, trust_remote_code=True)
        if getattr(hf_config, "quantization_config", None) is not None:
            del hf_config.quantization_config
    else:
        hf_config = transformers.AutoConfig.for_model(model_type, **settings)
    archs = config.get("architectures") or []
    model_cls = None if code_from else getattr(transformers, archs[0], None) if archs else None
    with torch.device("meta"):
        if code_from:
            model = transformers.AutoModelForCausalLM.from_config(hf_config, trust_remote_code=True)
        elif model_cls is not None:
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
    if any(sum(p.numel() for p in other.parameters()) != layer for other in layers):
        raise ValueError(f"the {layer_cls} layers differ in size (dense and sparse layers mixed)")
    counts = {
        "total": total, "embedding": embed.numel(), "lm_head": lm_head, "layer": layer,
        "other": total - embed.numel() - lm_head - len(layers) * layer, "vision": vision,
        "num_layers": len(layers), "layer_cls": layer_cls,
        "wrap_classes": [layer_cls] + sorted(no_split & present - {layer_cls}),
        "architecture": type(model).__name__, "linears": linears,
    }
    moe = _experts_on_meta(layers[0], torch)
    if moe:
        counts["moe"] = moe
    return counts


def _experts_on_meta(layer: Any, torch: Any) -> dict[str, Any] | None:
    """The routed experts of one decoder layer, read off the built model: the module named
    `experts` (fused 3-D tensors, or a list of expert MLPs in remote code), its parent block (the
    ZeRO-3 leaf module), the shared experts beside it and the router (the rest of the block)."""
    for name, experts in layer.named_modules():
        if name.rsplit(".", 1)[-1] != "experts":
            continue
        own = dict(experts.named_parameters(recurse=False))
        fused = {n: p for n, p in own.items() if p.dim() == 3}
        if fused:
            count = next(iter(fused.values())).shape[0]
        elif isinstance(experts, torch.nn.ModuleList) and len(experts):
            count = len(experts)
        else:
            continue
        parent_name = name.rsplit(".", 1)[0] if "." in name else ""
        block = layer.get_submodule(parent_name) if parent_name else layer
        block_params = sum(p.numel() for p in block.parameters())
        expert_total = sum(p.numel() for p in experts.parameters())
        shared = sum(p.numel() for n, p in block.named_parameters() if n.startswith("shared_expert"))
        return {"num_experts": int(count), "expert_params": expert_total // count,
                "router_params": block_params - expert_total - shared, "shared_expert_params": shared,
                "block_cls": type(block).__name__,
                "expert_parameters": sorted(f"{name}.{n}" for n, p in own.items() if p.dim() == 3)}
    return None


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
    "qwen3": {"vocab_size": 151936, "head_dim": 128, "max_position_embeddings": 32768, "tie_word_embeddings": False},
    "qwen3_moe": {"vocab_size": 151936, "max_position_embeddings": 32768, "tie_word_embeddings": False,
                  "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768},
    "mixtral": {"vocab_size": 32000, "num_key_value_heads": 8, "max_position_embeddings": 131072,
                "tie_word_embeddings": False, "num_local_experts": 8, "num_experts_per_tok": 2},
    "gpt_oss": {"vocab_size": 201088, "head_dim": 64, "max_position_embeddings": 131072, "tie_word_embeddings": False,
                "attention_bias": True, "num_local_experts": 128, "num_experts_per_tok": 4},
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
    "phi3": "Phi3DecoderLayer", "qwen2_5_vl_text": "Qwen2_5_VLDecoderLayer", "qwen3": "Qwen3DecoderLayer",
    "qwen3_moe": "Qwen3MoeDecoderLayer", "mixtral": "MixtralDecoderLayer", "gpt_oss": "GptOssDecoderLayer",
}
# Mixture-of-experts types the formula and the memory model read (modeling_<type>.py, transformers 5.x):
# the sparse block class (ZeRO-3's leaf module), the block's attribute in the layer, and the config
# keys each reads about its experts; any other expert key is refused by name (check_config).
_MOE_TYPES: dict[str, tuple[str, frozenset[str]]] = {
    "qwen3_moe": ("Qwen3MoeSparseMoeBlock", frozenset({
        "num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step",
        "mlp_only_layers", "norm_topk_prob", "output_router_logits", "router_aux_loss_coef"})),
    "mixtral": ("MixtralSparseMoeBlock", frozenset({
        "num_local_experts", "num_experts_per_tok", "output_router_logits", "router_aux_loss_coef",
        "router_jitter_noise"})),
    "gpt_oss": ("GptOssMLP", frozenset({
        "num_local_experts", "num_experts_per_tok", "experts_per_token", "output_router_logits",
        "router_aux_loss_coef"})),
}
# The expert keys read from a model's own code (--trust-remote-code): the experts themselves are
# found on the meta-built model; top-k and the expert width come from these.
_REMOTE_EXPERT_KEYS = frozenset({
    "num_experts", "num_local_experts", "n_routed_experts", "num_experts_per_tok", "experts_per_token",
    "moe_intermediate_size", "n_shared_experts", "shared_expert_intermediate_size", "norm_topk_prob",
    "output_router_logits", "router_aux_loss_coef"})
_EXPERT_KEY = re.compile(r"expert|moe|router", re.IGNORECASE)
_VISION_BLOCKS = {"gemma3": ["SiglipEncoderLayer", "SiglipVisionEmbeddings"],
                  "qwen2_5_vl": ["Qwen2_5_VLVisionBlock"]}


def spec_from_config(name: str, source: ModelSource, path: str | None, config: Any,
                     origin: str | None = None, trust_remote_code: bool = False) -> ModelSpec:
    """Dimensions and analytic parameter counts from a config.json (no torch).

    Every route to a ModelSpec comes through here, so `check_config` runs first: nothing is
    counted (here or on the meta device) from a config it refuses. `origin` names the config in
    its messages (the file, or the catalog entry); `name` when not given.

    Per-architecture module layouts follow transformers' modeling_<type>.py: which projections
    carry a bias, how many norms a layer has, Phi-3's fused qkv_proj and gate_up_proj.
    """
    warnings = check_config(config, origin or f"the config of {name}", trust_remote_code)
    outer_type = str(config.get("model_type", "llama"))
    multimodal = _MULTIMODAL.get(outer_type)
    text, text_type = _text_config(config)
    hidden = int(text["hidden_size"])
    inter = int(text["intermediate_size"])
    layers = int(text["num_hidden_layers"])
    heads = int(text["num_attention_heads"])
    vocab = int(text["vocab_size"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    if "tie_word_embeddings" in config:
        tied = bool(config["tie_word_embeddings"])
    elif multimodal:
        tied = bool((config.get("text_config") or {}).get("tie_word_embeddings", multimodal[1]))
    else:
        tied = bool(text.get("tie_word_embeddings", True))
    moe = _moe_spec(text_type, text, hidden)
    linears, layer = _decoder_layer(text_type, text, hidden, inter, heads, kv_heads, head_dim, moe)
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
        vision=_vision_spec(outer_type, config, hidden) if multimodal else None, warnings=warnings,
        moe=moe, trust_remote_code=trust_remote_code,
    )


def _moe_spec(text_type: str, text: dict[str, Any], hidden: int) -> MoESpec | None:
    """The experts as the config gives them (modeling_qwen3_moe / modeling_mixtral / modeling_gpt_oss),
    or, for a model's own code, as far as its keys tell (the meta count then reads the rest)."""
    experts = next((int(text[k]) for k in ("num_experts", "num_local_experts", "n_routed_experts") if text.get(k)), 0)
    if not experts:
        return None
    top_k = int(text.get("num_experts_per_tok") or text.get("experts_per_token") or 1)
    inter = int(text.get("moe_intermediate_size") or text["intermediate_size"])
    quantization = str((text.get("quantization_config") or {}).get("quant_method") or "")
    aux = bool(text.get("output_router_logits"))
    if text_type == "gpt_oss":  # gate_up_proj [E, H, 2I] + bias [E, 2I]; down_proj [E, I, H] + bias [E, H]
        return MoESpec("gpt_oss", experts, top_k, inter, 3 * hidden * inter + 2 * inter + hidden,
                       experts * hidden + experts, block_cls="GptOssMLP",
                       expert_parameters=("mlp.experts.down_proj", "mlp.experts.gate_up_proj"), aux_loss=aux,
                       quantization=quantization)
    if text_type in ("qwen3_moe", "mixtral"):  # gate_up_proj [E, 2I, H], down_proj [E, H, I]; router [E, H]
        return MoESpec(text_type, experts, top_k, inter, 3 * hidden * inter, experts * hidden,
                       block_cls=_MOE_TYPES[text_type][0],
                       expert_parameters=("mlp.experts.down_proj", "mlp.experts.gate_up_proj"), aux_loss=aux)
    # A model's own code: a gated expert MLP and a plain router until the meta count reads them off the model.
    shared_width = int(text.get("shared_expert_intermediate_size") or int(text.get("n_shared_experts") or 0) * inter)
    return MoESpec(text_type, experts, top_k, inter, 3 * hidden * inter, experts * hidden,
                   shared_expert_params=3 * hidden * shared_width, shared_intermediate_size=shared_width,
                   aux_loss=aux, quantization=quantization)


def _text_config(config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The language model's settings (a multimodal wrapper's `text_config` over its own keys) with
    the transformers defaults for keys left out or null, and the text model's type."""
    outer_type = str(config.get("model_type", "llama"))
    multimodal = _MULTIMODAL.get(outer_type)
    if multimodal:
        text = {**{k: v for k, v in config.items() if k not in ("text_config", "vision_config")},
                **(config.get("text_config") or {})}
        text_type = str((config.get("text_config") or {}).get("model_type") or multimodal[0])
    else:
        text, text_type = config, outer_type
    return {**_TEXT_DEFAULTS.get(text_type, {}), **{k: v for k, v in text.items() if v is not None}}, text_type


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
                   kv_heads: int, head_dim: int, moe: MoESpec | None = None) -> tuple[list[Linear], int]:
    """The linears of one decoder layer and its parameter count (weights, biases, norms)."""
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    if text_type in _MOE_TYPES and moe is not None:  # attention linears; the experts are 3-D parameters
        linears = [Linear("q_proj", hidden, q_out), Linear("k_proj", hidden, kv_out),
                   Linear("v_proj", hidden, kv_out), Linear("o_proj", q_out, hidden)]
        params = sum(lin.d_in * lin.d_out for lin in linears) + 2 * hidden  # + input and post-attention norms
        if text.get("attention_bias"):  # qwen3_moe and gpt_oss: q, k, v and o
            params += q_out + 2 * kv_out + hidden
        if text_type == "qwen3_moe":
            params += 2 * head_dim  # q_norm, k_norm
        if text_type == "gpt_oss":
            params += heads  # attention sinks
        return linears, params + moe.router_params + moe.num_experts * moe.expert_params
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
    elif text_type not in ("mistral", "qwen3") and text.get("attention_bias"):  # llama, gemma*: q, k, v and o
        params += q_out + 2 * kv_out + hidden
    if text_type not in ("mistral", "qwen2", "qwen2_5_vl_text", "phi3", "qwen3") and text.get("mlp_bias"):
        params += 2 * inter + hidden
    if text_type == "qwen3" and text.get("attention_bias"):  # modeling_qwen3: q, k, v and o
        params += q_out + 2 * kv_out + hidden
    norms = {"gemma2": 4 * hidden, "gemma3_text": 4 * hidden + 2 * head_dim,  # + q_norm, k_norm
             "qwen3": 2 * hidden + 2 * head_dim}
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


# ----------------------------------------------------------------------------- config checks

# The ceilings of config.json values, in one place. Each is far above every released model (the
# largest have about 130 layers, a hidden size of 25,600, an MLP of 100k, 128 heads, head_dim 512,
# a vocabulary of 262k, 10M positions and 384 experts) and low enough that counting stays bounded:
# meta counting builds every layer (10,000 layers take seconds, 10**12 never finish). A value
# above one is a typo or a damaged file, not a model.
CONFIG_CEILINGS: dict[str, int] = {
    "layers": 10_000,
    "width": 1_000_000,            # hidden and vision sizes, head_dim
    "mlp": 10_000_000,             # intermediate sizes
    "heads": 100_000,
    "vocab": 100_000_000,
    "positions": 1 << 30,
    "experts": 100_000,
    "image": 100_000,              # image_size and patch_size in pixels
    "small": 1_024,                # channels, merge and temporal patch sizes
    "tokens_per_image": 1_000_000,  # image tokens and patches per image (Gemma 3: 256 and 4,096)
}
# The language model's keys: (ceiling, required). Absent optional keys take their defaults.
_TEXT_KEYS: dict[str, tuple[str, bool]] = {
    "hidden_size": ("width", True), "intermediate_size": ("mlp", True), "num_hidden_layers": ("layers", True),
    "num_attention_heads": ("heads", True), "vocab_size": ("vocab", True),
    "num_key_value_heads": ("heads", False), "head_dim": ("width", False),
    "max_position_embeddings": ("positions", False),
    # Mixture-of-experts configs (Mixtral, Qwen-MoE, DeepSeek, Phi-MoE), when present.
    "num_local_experts": ("experts", False), "num_experts": ("experts", False), "n_routed_experts": ("experts", False),
    "num_experts_per_tok": ("experts", False), "moe_intermediate_size": ("mlp", False),
    "decoder_sparse_step": ("layers", False),
}
# Keys where 0 means "none" (no shared experts), so only negatives and the ceiling are refused.
_ZERO_ALLOWED: dict[str, str] = {"n_shared_experts": "experts", "shared_expert_intermediate_size": "mlp"}
_VISION_KEYS: dict[str, dict[str, str]] = {
    "gemma3": {"hidden_size": "width", "intermediate_size": "mlp", "num_hidden_layers": "layers",
               "num_attention_heads": "heads", "num_channels": "small", "image_size": "image", "patch_size": "image"},
    "qwen2_5_vl": {"hidden_size": "width", "intermediate_size": "mlp", "depth": "layers", "num_heads": "heads",
                   "in_channels": "small", "patch_size": "image", "spatial_merge_size": "small",
                   "temporal_patch_size": "small", "out_hidden_size": "width", "window_size": "image"},
}
_CONFIG_FIX = ("Restore the model's config.json as the model's release has it; llmwizard plans decoder-only "
               "transformers with a standard config.json.")


def known_model_types() -> list[str]:
    """The model types whose layers the formula and the memory model know."""
    return sorted({*_LAYER_CLASSES, *_MULTIMODAL} - {"qwen2_5_vl_text"})


def check_config(config: Any, origin: str, trust_remote_code: bool = False) -> list[str]:
    """Refuse a config.json the planner cannot trust; return the warnings for one it can plan.

    Every size is an integer from 1 to its ceiling (CONFIG_CEILINGS), heads divide the hidden size
    unless head_dim is given and key/value heads divide the heads. Raises UserError naming
    `origin`, the key, the value and what is allowed.

    Nothing is planned as a model it is not: a config that names its own code (`auto_map`) or a
    model_type the planner does not know is refused unless the user consents to running the
    model's code (`trust_remote_code`); then the model is built with it on the meta device to be
    counted. Expert keys the planner does not read for that type are refused by name."""
    if not isinstance(config, dict):
        raise UserError(f"{origin} holds a JSON {_json_kind(config)}, not an object of model settings.",
                        title="Model config", fix=_CONFIG_FIX)
    for key, kind in (("model_type", str), ("text_config", dict), ("vision_config", dict)):
        if config.get(key) is not None and not isinstance(config[key], kind):
            raise UserError(f"{origin}: `{key}` is {_shown(config[key])}; it must be a JSON "
                            f"{'string' if kind is str else 'object'}.", title="Model config", fix=_CONFIG_FIX)
    archs = config.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise UserError(f"{origin}: `architectures` is {_shown(archs)}; it must be a list of class names.",
                        title="Model config", fix=_CONFIG_FIX)
    if "tie_word_embeddings" in config and not isinstance(config["tie_word_embeddings"], bool):
        raise UserError(f"{origin}: `tie_word_embeddings` is {_shown(config['tie_word_embeddings'])}; it must be "
                        "true or false.", title="Model config", fix=_CONFIG_FIX)
    outer_type = str(config.get("model_type", "llama"))
    text, text_type = _text_config(config)
    in_text = outer_type in _MULTIMODAL and isinstance(config.get("text_config"), dict)

    def label(key: str) -> str:
        """The key as the file spells it: inside `text_config` for a multimodal wrapper."""
        return f"text_config.{key}" if in_text and key in config["text_config"] else key

    for key, (ceiling, required) in _TEXT_KEYS.items():
        if key in text:
            _check_int(origin, label(key), text[key], 1, ceiling)
        elif required:
            raise UserError(f"{origin} lacks `{label(key)}`.", title="Model config", fix=_CONFIG_FIX)
    for key, ceiling in _ZERO_ALLOWED.items():
        if key in text:
            _check_int(origin, label(key), text[key], 0, ceiling)
    hidden, heads = text["hidden_size"], text["num_attention_heads"]
    if text.get("head_dim") is None and hidden % heads:
        raise UserError(f"{origin}: `{label('num_attention_heads')}` {heads} does not divide `{label('hidden_size')}` "
                        f"{hidden}, and no `head_dim` is given.", title="Model config",
                        fix="Each head takes hidden_size / num_attention_heads of the width: give a head count that "
                            "divides it, or the model's `head_dim`.")
    kv_heads = text.get("num_key_value_heads", heads)
    if heads % kv_heads:
        raise UserError(f"{origin}: `{label('num_key_value_heads')}` {kv_heads} does not divide "
                        f"`{label('num_attention_heads')}` {heads}.", title="Model config",
                        fix="Grouped-query attention shares each key/value head among the same number of query "
                            "heads: use a divisor of num_attention_heads.")
    experts = next((text[k] for k in ("num_local_experts", "num_experts", "n_routed_experts") if k in text), None)
    if experts is not None and text.get("num_experts_per_tok", 1) > experts:
        raise UserError(f"{origin}: `{label('num_experts_per_tok')}` {text['num_experts_per_tok']} is more than the "
                        f"{experts} experts.", title="Model config", fix=_CONFIG_FIX)
    if outer_type in _VISION_KEYS:
        _check_vision(config, origin, outer_type)
    unknown = [t for t in dict.fromkeys((outer_type, text_type)) if t not in _LAYER_CLASSES and t not in _MULTIMODAL]
    custom = config.get("auto_map")
    if (unknown or custom) and not trust_remote_code:
        raise UserError(_remote_code_refusal(origin, outer_type if not unknown else unknown[0], custom),
                        title="Model code",
                        fix="If you trust the model's code, pass --trust-remote-code (preset or plan.yaml key "
                            "`trust_remote_code: true`; the wizard's Model step has the box): llmwizard then builds "
                            "the model with its own code on the meta device to count it, and the training entry "
                            "loads it with that code. Otherwise pick a model llmwizard knows "
                            f"({', '.join(known_model_types())}), e.g. from `llmwizard plan --model qwen3-8b`.")
    _check_expert_keys(text, text_type, origin, label, trusted=bool(unknown or custom))
    if unknown or custom:
        return [(f"model_type '{outer_type if not unknown else unknown[0]}' ({origin}) runs its own code "
                 "(--trust-remote-code): its parameters, decoder layers and experts are counted on the model that "
                 "code builds, and each layer's activations are sized as attention plus a gated MLP, so check the "
                 "figure with --probe before a long run.")]
    return []


def _remote_code_refusal(origin: str, model_type: str, auto_map: Any) -> str:
    """Why a config is not planned without consent: whose code would run, and that it would."""
    if auto_map:
        classes = sorted({str(v) for v in auto_map.values()}) if isinstance(auto_map, dict) else [_shown(auto_map)]
        return (f"{origin} has model_type '{model_type}' and names its own code (auto_map: "
                f"{', '.join(classes)[:200]}). Planning and training it run that code on this machine, "
                "and llmwizard does not run a model's code, or plan the model as another one, without "
                "--trust-remote-code.")
    return (f"{origin} has model_type '{model_type}', which llmwizard does not know. Counting and training it run "
            "the model's own code (transformers' or the model repository's) on this machine, and llmwizard does "
            "not run it, or plan the model as another one, without --trust-remote-code.")


def _check_expert_keys(text: dict[str, Any], text_type: str, origin: str, label: Any, trusted: bool) -> None:
    """Expert settings the planner does not read for this model type are refused by name: a dense
    type with experts, or a key that changes the experts' shape in a way the counts would miss."""
    readable = _MOE_TYPES[text_type][1] if text_type in _MOE_TYPES else _REMOTE_EXPERT_KEYS if trusted else frozenset()
    unread = sorted(k for k, v in text.items() if _EXPERT_KEY.search(k) and k not in readable
                    and v not in (None, 0, False, [], "", {}))
    if unread:
        kind = (f"a '{text_type}' model, which has no experts" if text_type not in _MOE_TYPES and not trusted
                else f"a '{text_type}' model")
        raise UserError(f"{origin} sets expert settings llmwizard does not read for {kind}: "
                        f"{', '.join(f'`{label(k)}` {_shown(text[k])}' for k in unread[:6])}. Planning it would "
                        "count a model it is not.", title="Model config",
                        fix=f"{_CONFIG_FIX} A Mixture-of-Experts model of another architecture plans with "
                            "--trust-remote-code when its own code builds it.")
    if text_type == "qwen3_moe":
        sparse_step = text.get("decoder_sparse_step", 1)
        if sparse_step != 1 or text.get("mlp_only_layers"):
            key = "decoder_sparse_step" if sparse_step != 1 else "mlp_only_layers"
            raise UserError(f"{origin}: `{label(key)}` is {_shown(text[key])}: dense and expert layers mixed, "
                            "which llmwizard's per-layer counts do not describe (every layer of released Qwen3-MoE "
                            "models has experts).", title="Model config",
                            fix="Set decoder_sparse_step 1 and mlp_only_layers [] as the released models have them.")
    if text_type in _MOE_TYPES or trusted:
        experts = next((text[k] for k in ("num_experts", "num_local_experts", "n_routed_experts") if text.get(k)), 0)
        if experts and not (text.get("num_experts_per_tok") or text.get("experts_per_token")):
            raise UserError(f"{origin} gives {experts} experts but not how many each token is sent to "
                            "(`num_experts_per_tok`).", title="Model config", fix=_CONFIG_FIX)
        if text.get("experts_per_token") is not None:
            _check_int(origin, label("experts_per_token"), text["experts_per_token"], 1, "experts")


def _check_vision(config: dict[str, Any], origin: str, outer_type: str) -> None:
    """The vision tower's sizes, with the transformers defaults for keys left out."""
    defaults = _VISION_DEFAULTS["siglip_vision_model" if outer_type == "gemma3" else "qwen2_5_vl"]
    given = config.get("vision_config") or {}
    vision = {**defaults, "num_heads": 16, "window_size": 112,
              **{k: v for k, v in given.items() if v is not None}}
    for key, ceiling in _VISION_KEYS[outer_type].items():
        _check_int(origin, f"vision_config.{key}", vision[key], 1, ceiling)
    heads_key = "num_attention_heads" if outer_type == "gemma3" else "num_heads"
    if vision["hidden_size"] % vision[heads_key]:
        raise UserError(f"{origin}: `vision_config.{heads_key}` {vision[heads_key]} does not divide "
                        f"`vision_config.hidden_size` {vision['hidden_size']}.", title="Model config", fix=_CONFIG_FIX)
    if outer_type == "gemma3":
        if vision["patch_size"] > vision["image_size"]:
            raise UserError(f"{origin}: `vision_config.patch_size` {vision['patch_size']} is larger than "
                            f"`vision_config.image_size` {vision['image_size']}.", title="Model config",
                            fix=_CONFIG_FIX)
        patches = (vision["image_size"] // vision["patch_size"]) ** 2
        if patches > CONFIG_CEILINGS["tokens_per_image"]:
            raise UserError(f"{origin}: `vision_config.image_size` {vision['image_size']} in patches of "
                            f"`vision_config.patch_size` {vision['patch_size']} makes {patches:,} patches per image, "
                            f"more than {CONFIG_CEILINGS['tokens_per_image']:,}.", title="Model config",
                            fix=_CONFIG_FIX)
        if config.get("mm_tokens_per_image") is not None:
            _check_int(origin, "mm_tokens_per_image", config["mm_tokens_per_image"], 1, "tokens_per_image")
        return
    blocks = vision.get("fullatt_block_indexes")
    if blocks is not None and not (isinstance(blocks, list) and all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b < vision["depth"] for b in blocks)):
        raise UserError(f"{origin}: `vision_config.fullatt_block_indexes` is {_shown(blocks)}; it must list block "
                        f"numbers from 0 to {vision['depth'] - 1}.", title="Model config", fix=_CONFIG_FIX)


def _check_int(origin: str, key: str, value: Any, low: int, ceiling: str) -> None:
    top = CONFIG_CEILINGS[ceiling]
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= top:
        return
    raise UserError(f"{origin}: `{key}` is {_shown(value)}; it must be an integer from {low} to {top:,}.",
                    title="Model config",
                    fix=f"{_CONFIG_FIX} (No released model comes near {top:,}: the ceilings are in "
                        "llmwizard.autotune.model.param_counts.CONFIG_CEILINGS.)")


def _shown(value: Any) -> str:
    """A value as the message shows it: JSON spelling, cut short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")
