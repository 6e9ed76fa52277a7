"""What the planner needs to know about a model, without its weights.

A `ModelSpec` holds the dimensions that drive memory (hidden, MLP width, layers, heads, vocab),
the decoder-layer class FSDP wraps, the linear projections LoRA adapts and the parameter counts
by part. Names resolve in this order: the embedded default, a local directory with config.json,
the bundled catalog (`model_catalog.json`, names and aliases, case-insensitive), a hub id.

Counts are exact. Catalog models carry counts made by building each model on the meta device
(`bench/build_model_catalog.py`), so planning for them imports no torch. A local or hub config
is counted on the meta device once and cached under the user cache, keyed by a hash of its
config.json. The analytic formula below needs no torch; it is the fallback for configs
transformers cannot build, and the tests hold it equal to the meta count for every catalog
architecture.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from autotune.embedded import EMBEDDED_MODEL, MODEL_CONFIG, cache_root, embedded_model_dir
from autotune.errors import UserError

CATALOG_PATH = Path(__file__).parent / "model_catalog.json"


@dataclass(frozen=True)
class Linear:
    """One linear projection inside a decoder layer: a LoRA target."""

    name: str
    d_in: int
    d_out: int


@dataclass
class ModelSpec:
    name: str                      # what from_pretrained loads when path is None (a hub id)
    source: str                    # "embedded", "local", "catalog" or "hub"
    path: str | None               # what from_pretrained loads; None when not on disk
    model_type: str
    layer_cls: str                 # the decoder layer class FSDP wraps
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    tie_embeddings: bool
    embedding_params: int
    lm_head_params: int            # 0 when tied to the embedding
    layer_params: int              # one decoder layer
    other_params: int              # final norm, vision tower, ...
    total_params: int
    linears: list[Linear] = field(default_factory=list)
    catalog_name: str | None = None
    architecture: str = ""         # the model class, e.g. "Qwen2_5_VLForConditionalGeneration"
    wrap_classes: list[str] = field(default_factory=list)  # every block class to wrap (vision blocks too)
    vision_params: int = 0         # vision tower + projector, part of other_params
    # PEFT `exclude_modules` regex that keeps LoRA on the language model: a list of names such as
    # "gate_proj" also matches the vision tower's layers of the same name.
    lora_exclude_modules: str | None = None
    count_method: str = "formula"  # "meta": counted on transformers' model built on the meta device

    @property
    def largest_unit_params(self) -> int:
        """The biggest block that is ever gathered whole under full sharding."""
        return max(self.layer_params, self.embedding_params, self.lm_head_params)

    def lora_params(self, r: int, targets: list[str] | None = None) -> int:
        """Exact LoRA parameter count: r * (d_in + d_out) for every adapted linear (PEFT's LoRA A, B)."""
        chosen = [lin for lin in self.linears if targets is None or lin.name in targets]
        return self.num_layers * sum(r * (lin.d_in + lin.d_out) for lin in chosen)

    def lora_target_modules(self, targets: list[str] | None = None) -> list[str]:
        """`target_modules` for PEFT / TRL's `lora_target_modules` that adapts exactly what
        `lora_params` counts.

        Plain names match every module with that name, the vision tower's too, and TRL turns a
        one-item list into a string that PEFT reads as a regex (fullmatch). So the names go out as
        they are only for a text model with several targets; otherwise as one regex that skips
        the vision tower.
        """
        names = [name for name in self.linear_names if targets is None or name in targets]
        if not self.lora_exclude_modules and len(names) > 1:
            return names
        skip = f"(?!{self.lora_exclude_modules.removesuffix('.*')})" if self.lora_exclude_modules else ""
        return [rf"{skip}.*\.(?:{'|'.join(re.escape(name) for name in names)})"]

    @property
    def linear_names(self) -> list[str]:
        return list(dict.fromkeys(lin.name for lin in self.linears))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- names

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_model_spec(name: str | None) -> ModelSpec:
    """The embedded default, a local model directory, a catalog name or alias, or a hub id."""
    if name is None or name == EMBEDDED_MODEL:
        return spec_from_config(EMBEDDED_MODEL, "embedded", str(embedded_model_dir()), MODEL_CONFIG)
    path = Path(name).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise UserError(f"Model directory {name} has no config.json.", title="Model",
                            fix="Point --model at a directory saved with save_pretrained().")
        return _spec_from_file(path.name, "local", str(path.resolve()), config_file)
    entry = _catalog_lookup(name)
    if entry is not None:
        # A hub id the user typed (base or instruct) is what gets loaded, in the hub's own spelling.
        hub_ids = [entry["hub_id"], *entry["hub_ids"]]
        hub_id = next((h for h in hub_ids if _catalog_key(h) == _catalog_key(name)), entry["hub_id"])
        return _spec_from_catalog(entry, hub_id)
    known = [key for entry in _catalog()["models"] for key in (entry["name"], *entry["aliases"])]
    suggestions = difflib.get_close_matches(name.strip().lower(), known, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(suggestions)}?)" if suggestions else ""
    if not _HUB_ID.match(name):
        raise UserError(f"Unknown model '{name}': not a local directory and not in the catalog{hint}.",
                        title="Model", fix="Pass a directory that holds config.json, a catalog name "
                        "(`llmwizard plan --model llama-3.1-8b`) or a hub id such as org/name.")
    config_file, why = _hub_config_file(name)
    if config_file is None:
        raise UserError(
            f"Unknown model '{name}': not a local directory, not in the catalog{hint} "
            f"and the hub is unreachable ({why}).", title="Model",
            fix="Download the model (huggingface-cli download) and pass its directory, or allow hub "
                "access (unset HF_HUB_OFFLINE, log in for gated models), or pick a catalog name.")
    return _spec_from_file(name, "hub", None, config_file)


def catalog_names() -> list[str]:
    """The short names of every catalog model, in catalog order."""
    return [entry["name"] for entry in _catalog()["models"]]


def search_catalog(text: str, limit: int = 10) -> list[dict[str, Any]]:
    """Catalog models whose name, alias, hub id or family contains `text` (for completion).

    Each match is {"name", "hub_id", "family", "total_params", "layer_cls"}; names that start
    with the text come first.
    """
    needle = text.strip().lower()
    scored = []
    for order, entry in enumerate(_catalog()["models"]):
        keys = [entry["name"], entry["hub_id"], *entry["hub_ids"], *entry["aliases"], entry["family"]]
        keys = [k.lower() for k in keys]
        if needle and not any(needle in k for k in keys):
            continue
        rank = 0 if any(k.startswith(needle) or k.split("/")[-1].startswith(needle) for k in keys) else 1
        scored.append((rank, order, entry))
    scored.sort(key=lambda item: item[:2])
    return [{"name": e["name"], "hub_id": e["hub_id"], "family": e["family"],
             "total_params": e["exact"]["total"], "layer_cls": e["exact"]["layer_cls"]}
            for _, _, e in scored[:limit]]


@lru_cache(maxsize=1)
def _catalog() -> dict[str, Any]:
    return json.loads(CATALOG_PATH.read_text())


@lru_cache(maxsize=1)
def _catalog_index() -> dict[str, dict[str, Any]]:
    index: dict[str, dict[str, Any]] = {}
    for entry in _catalog()["models"]:
        for key in (entry["name"], entry["hub_id"], *entry["hub_ids"], *entry["aliases"]):
            index[_catalog_key(key)] = entry
    return index


def _catalog_lookup(name: str) -> dict[str, Any] | None:
    return _catalog_index().get(_catalog_key(name))


def _catalog_key(name: str) -> str:
    """Case and separators do not matter: "LLaMA3.1-8B" finds "llama-3.1-8b"."""
    return re.sub(r"[-_\s]", "", name.strip().lower())


def _spec_from_catalog(entry: dict[str, Any], hub_id: str) -> ModelSpec:
    spec = spec_from_config(hub_id, "catalog", None, entry["config"])
    spec.catalog_name = entry["name"]
    return _with_counts(spec, entry["exact"])


def _hub_config_file(repo_id: str) -> tuple[Path | None, str]:
    """config.json of a hub model: the local HF cache first, the network unless HF_HUB_OFFLINE."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.constants import HF_HUB_OFFLINE
    except ImportError:
        return None, "huggingface_hub is not installed"
    try:
        return Path(hf_hub_download(repo_id, "config.json", local_files_only=True)), ""
    except Exception:  # noqa: BLE001 (not cached: any failure here means "ask the hub")
        pass
    if HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return None, "HF_HUB_OFFLINE is set and config.json is not in the local cache"
    try:
        return Path(hf_hub_download(repo_id, "config.json")), ""
    except Exception as exc:  # noqa: BLE001 (gated, missing, no network: all read the same to the user)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no answer'}"


# ----------------------------------------------------------------------------- exact counts

def _spec_from_file(name: str, source: str, path: str | None, config_file: Path) -> ModelSpec:
    raw = config_file.read_bytes()
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise UserError(f"{config_file} is not valid JSON: {exc}", title="Model",
                        fix="Restore the model's config.json.") from None
    spec = spec_from_config(name, source, path, config)
    counts = _cached_meta_counts(raw, config)
    return _with_counts(spec, counts) if counts else spec


def _cached_meta_counts(raw: bytes, config: dict[str, Any]) -> dict[str, Any] | None:
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


def _with_counts(spec: ModelSpec, exact: dict[str, Any]) -> ModelSpec:
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


def spec_from_config(name: str, source: str, path: str | None, config: dict[str, Any]) -> ModelSpec:
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
    )


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
