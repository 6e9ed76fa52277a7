"""What the planner needs to know about a model, without its weights.

A `ModelSpec` holds the dimensions that drive memory (hidden, MLP width, layers, heads, vocab),
the decoder-layer class FSDP wraps, and the parameter counts by part. It comes from the embedded
default, a local directory with config.json, or a bundled catalog of well-known models.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autotune.embedded import EMBEDDED_MODEL, MODEL_CONFIG, embedded_model_dir
from autotune.errors import UserError


@dataclass(frozen=True)
class Linear:
    """One linear projection inside a decoder layer: a LoRA target."""

    name: str
    d_in: int
    d_out: int


@dataclass
class ModelSpec:
    name: str
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

    @property
    def largest_unit_params(self) -> int:
        """The biggest block that is ever gathered whole under full sharding."""
        return max(self.layer_params, self.embedding_params, self.lm_head_params)

    def lora_params(self, r: int, targets: list[str] | None = None) -> int:
        """Exact LoRA parameter count: r * (d_in + d_out) for every adapted linear."""
        chosen = [lin for lin in self.linears if targets is None or lin.name in targets]
        return self.num_layers * sum(r * (lin.d_in + lin.d_out) for lin in chosen)

    @property
    def linear_names(self) -> list[str]:
        return [lin.name for lin in self.linears]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_model_spec(name: str | None) -> ModelSpec:
    """The embedded default, a local model directory, or a catalog name."""
    if name is None or name == EMBEDDED_MODEL:
        return spec_from_config(EMBEDDED_MODEL, "embedded", str(embedded_model_dir()), MODEL_CONFIG)
    path = Path(name).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise UserError(f"Model directory {name} has no config.json.", title="Model",
                            fix="Point --model at a directory saved with save_pretrained().")
        try:
            config = json.loads(config_file.read_text())
        except ValueError as exc:
            raise UserError(f"{config_file} is not valid JSON: {exc}", title="Model",
                            fix="Restore the model's config.json.") from None
        return spec_from_config(path.name, "local", str(path.resolve()), config)
    raise UserError(
        f"Unknown model '{name}': it is not a local directory.",
        title="Model",
        fix="Pass --model with a directory that holds config.json, or leave it out for the embedded default.",
    )


_LAYER_CLASSES = {
    "llama": "LlamaDecoderLayer", "mistral": "MistralDecoderLayer", "qwen2": "Qwen2DecoderLayer",
    "gemma": "GemmaDecoderLayer", "gemma2": "Gemma2DecoderLayer", "gemma3_text": "Gemma3DecoderLayer",
    "phi3": "Phi3DecoderLayer",
}


def spec_from_config(name: str, source: str, path: str | None, config: dict[str, Any]) -> ModelSpec:
    """Dimensions and parameter counts of a Llama-style decoder from its config.json."""
    text = config.get("text_config", config)
    model_type = str(text.get("model_type", config.get("model_type", "llama")))
    try:
        hidden = int(text["hidden_size"])
        inter = int(text["intermediate_size"])
        layers = int(text["num_hidden_layers"])
        heads = int(text["num_attention_heads"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"Model config for {name} lacks {exc}.", title="Model",
                        fix="llmwizard plans decoder-only transformers with a standard config.json.") from None
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    vocab = int(text["vocab_size"])
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))
    bias = bool(text.get("attention_bias", model_type == "qwen2"))
    linears = [
        Linear("q_proj", hidden, heads * head_dim),
        Linear("k_proj", hidden, kv_heads * head_dim),
        Linear("v_proj", hidden, kv_heads * head_dim),
        Linear("o_proj", heads * head_dim, hidden),
        Linear("gate_proj", hidden, inter),
        Linear("up_proj", hidden, inter),
        Linear("down_proj", inter, hidden),
    ]
    layer = sum(lin.d_in * lin.d_out for lin in linears) + 2 * hidden
    if bias:
        layer += (heads + 2 * kv_heads) * head_dim
    embedding = vocab * hidden
    lm_head = 0 if tied else vocab * hidden
    other = hidden  # final norm
    return ModelSpec(
        name=name, source=source, path=path, model_type=model_type,
        layer_cls=_LAYER_CLASSES.get(model_type, f"{model_type.title()}DecoderLayer"),
        hidden_size=hidden, intermediate_size=inter, num_layers=layers, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim, vocab_size=vocab,
        max_positions=int(text.get("max_position_embeddings", 2048)), tie_embeddings=tied,
        embedding_params=embedding, lm_head_params=lm_head, layer_params=layer, other_params=other,
        total_params=embedding + lm_head + layers * layer + other, linears=linears,
    )
