"""What the planner knows about a model, as data: its dimensions, parameter counts and linears.

The bottom of the model modules: llmwizard.autotune.model.param_counts counts a config into a
`ModelSpec`, llmwizard.autotune.model.model_spec resolves a name to one, and the memory model and
planner only read it. Imports nothing from llmwizard.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from llmwizard.autotune.schema import ModelSource


@dataclass(frozen=True)
class Linear:
    """One linear projection inside a decoder layer: a LoRA target."""

    name: str
    d_in: int
    d_out: int


@dataclass(frozen=True)
class VisionSpec:
    """A vision tower's dimensions: what its activations and the image-token count depend on.

    `kind` is "qwen2_5_vl" (dynamic resolution: patches of `patch_size` pixels, merged
    `merge_size` x `merge_size` into one token) or "siglip" (Gemma 3: a fixed image size and a
    fixed `tokens_per_image` after pooling)."""

    kind: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    patch_size: int
    merge_size: int = 1            # Qwen2.5-VL: 2 x 2 patches make one token
    temporal_patch_size: int = 1   # Qwen2.5-VL: 2 (an image is repeated in time)
    out_hidden_size: int = 0       # the language model's width the merger/projector maps to
    image_size: int = 0            # SigLIP: every image is resized to this square
    tokens_per_image: int = 0      # SigLIP/Gemma 3: fixed image tokens (mm_tokens_per_image)
    window_size: int = 0           # Qwen2.5-VL: windowed attention span in pixels (0: full)
    full_attention_blocks: int = 0  # Qwen2.5-VL: blocks with full attention (fullatt_block_indexes)

    def lora_params(self, r: int) -> int:
        """LoRA parameters on every linear of the tower's blocks: r * (d_in + d_out) each."""
        h, i = self.hidden_size, self.intermediate_size
        if self.kind == "siglip":  # q, k, v, out; fc1, fc2
            block = 4 * r * (h + h) + r * (h + i) + r * (i + h)
        else:  # fused qkv, proj; gate, up, down
            block = r * (h + 3 * h) + r * (h + h) + 2 * r * (h + i) + r * (i + h)
        return self.num_layers * block


@dataclass(frozen=True)
class MoESpec:
    """A Mixture-of-Experts MLP: what the expert-aware memory terms, LoRA targets and the ZeRO-3
    leaf module depend on. Every MoE layer is alike (configs that mix dense and sparse layers are
    refused in llmwizard.autotune.model.param_counts), so the counts are per MoE layer.

    Parameter names follow transformers' modeling_<type>.py (5.x): routed experts are fused 3-D
    tensors (`mlp.experts.gate_up_proj` [E, 2I, H], `mlp.experts.down_proj` [E, H, I]), which PEFT
    reaches through `target_parameters`, never through `target_modules`."""

    kind: str                      # qwen3_moe, mixtral, gpt_oss, or the config's own type (remote code)
    num_experts: int               # routed experts per MoE layer
    experts_per_token: int         # top-k
    expert_intermediate_size: int  # one expert's MLP width
    expert_params: int             # one routed expert: weights and biases
    router_params: int             # the router of one layer
    shared_expert_params: int = 0  # always-on experts of one layer
    shared_intermediate_size: int = 0  # their MLP width (all shared experts together)
    block_cls: str = ""            # the sparse MoE block class: DeepSpeed ZeRO-3's leaf module
    expert_parameters: tuple[str, ...] = ()  # PEFT target_parameters for the routed experts
    aux_loss: bool = False         # output_router_logits: the load-balancing loss is computed
    quantization: str = ""         # "mxfp4": released quantized, dequantized to bf16 for training

    def expert_lora_params(self, r: int, hidden: int) -> int:
        """LoRA on the fused expert tensors of one layer, as PEFT's ParamWrapper makes it: one
        A [E*r, d_in] and B [d_out, E*r] pair per 3-D parameter (peft/tuners/lora/layer.py)."""
        inter, experts = self.expert_intermediate_size, self.num_experts
        return experts * r * ((hidden + 2 * inter) + (inter + hidden))


@dataclass
class ModelSpec:
    name: str                      # what from_pretrained loads when path is None (a hub id)
    source: ModelSource            # "embedded", "local", "catalog" or "hub"
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
    vision: VisionSpec | None = None  # the vision tower of a vision-language model
    # What the plan must say about the config (an architecture the memory model does not describe).
    warnings: list[str] = field(default_factory=list)
    moe: MoESpec | None = None     # the experts of a Mixture-of-Experts model
    trust_remote_code: bool = False  # counted with the model's own code (auto_map), by consent

    @property
    def active_params(self) -> int:
        """Parameters one token passes through: all but the routed experts it is not sent to."""
        if self.moe is None:
            return self.total_params
        idle = self.moe.num_experts - self.moe.experts_per_token
        return self.total_params - self.num_layers * idle * self.moe.expert_params

    @property
    def largest_unit_params(self) -> int:
        """The biggest block that is ever gathered whole under full sharding."""
        return max(self.layer_params, self.embedding_params, self.lm_head_params)

    def lora_params(self, r: int, targets: list[str] | None = None) -> int:
        """Exact LoRA parameter count: r * (d_in + d_out) for every adapted linear (PEFT's LoRA A, B)."""
        chosen = [lin for lin in self.linears if targets is None or lin.name in targets]
        # "experts" (never a default) adapts the routed experts' fused weights through target_parameters.
        experts = (self.moe.expert_lora_params(r, self.hidden_size)
                   if self.moe and self.moe.expert_parameters and targets and "experts" in targets else 0)
        return self.num_layers * (sum(r * (lin.d_in + lin.d_out) for lin in chosen) + experts)

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
