"""The vision tower's part of a vision-language run: its LoRA targets, its memory, its image tokens.

Image tokens are part of the sequence the language model sees (the dataset profile counts them
into every length), so the decoder's activations already cover them. What the tower adds:

- its input, `pixel_values`, in fp32: one row of channels x temporal x patch x patch values per
  patch (Qwen2.5-VL: 3 x 2 x 14 x 14 = 1176), held for the whole step;
- frozen (the LoRA default): nothing saved for backward (no weight trains and the pixels need no
  gradient), but the forward's working set of one block while it runs;
- trained (full fine-tuning, or --train-vision-tower with LoRA): per patch and block, what the
  autograd graph of HF's Qwen2.5-VL vision block (RMSNorm, fused qkv with bias, 2-D rotary in
  fp32, attention per window, SwiGLU with biases) or SigLIP's encoder layer keeps for backward.

Checked against FakeTensorMode + MemTracker at real widths (bench/memory_validation.py,
`--vision`). Patches per sequence come from the dataset's longest example: its image tokens x
merge^2 for Qwen2.5-VL, its images x (image_size / patch)^2 for SigLIP.
"""

from __future__ import annotations

import re

from llmwizard.autotune.memory.activations import layout
from llmwizard.autotune.model.model_types import ModelSpec, VisionSpec
from llmwizard.autotune.train_setup import TrainSetup

# Linear layers inside one vision block, by tower kind, as PEFT sees their names.
_VISION_LINEARS = {
    "qwen2_5_vl": r"visual\.blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.(?:gate_proj|up_proj|down_proj))",
    "siglip": r"vision_tower\..*\.(?:self_attn\.(?:q_proj|k_proj|v_proj|out_proj)|mlp\.(?:fc1|fc2))",
}


def patches_per_image_token(vision: VisionSpec) -> float:
    if vision.kind == "siglip":
        return (vision.image_size // vision.patch_size) ** 2 / max(1, vision.tokens_per_image)
    return float(vision.merge_size**2)


def sequence_patches(model: ModelSpec, image_tokens: int, images: int = 0) -> int:
    """Patches the tower encodes for a sequence holding `image_tokens` image tokens in `images`
    images. SigLIP (Gemma 3) sees every image as one square of (image_size / patch)^2 patches,
    whatever its token count holds besides the pooled tokens (the markers around them)."""
    v = model.vision
    if v is None or image_tokens <= 0:
        return 0
    if v.kind == "siglip" and images > 0:
        return images * (v.image_size // v.patch_size) ** 2
    return round(image_tokens * patches_per_image_token(v))


def lora_targets(model: ModelSpec, targets: list[str], train_tower: bool) -> list[str]:
    """PEFT target_modules: the language model's linears, plus the tower's when it trains."""
    base = model.lora_target_modules(targets)
    if not train_tower or model.vision is None:
        return base
    return [f"(?:{base[0]}|.*{_VISION_LINEARS[model.vision.kind]})"]


def pixel_bytes(model: ModelSpec, patches: int) -> float:
    """`pixel_values` for those patches, as the processor makes them (fp32)."""
    v = model.vision
    if v is None:
        return 0.0
    return patches * 3 * v.temporal_patch_size * v.patch_size**2 * 4


def block_patch_bytes(model: ModelSpec, setup: TrainSetup) -> float:
    """Bytes one trained vision block keeps for backward, per patch (sdpa/flash attention)."""
    v = model.vision
    assert v is not None
    lay = layout(model, setup)
    c, s = lay.compute, lay.stream
    h, i = v.hidden_size, v.intermediate_size
    if v.kind == "siglip":
        # LayerNorm x2 (input + mean/rstd), q/k/v/out inputs, attention q, k, v, out, lse, GELU MLP
        return 2 * (s * h + 8) + c * h * 2 + c * 4 * h + 4 * v.num_heads + c * h + c * i * 2
    norms = 2 * (4 * h + s * h + 8)             # RMSNorm: fp32 input, normalised tensor, rstd
    linears_in = c * h * 2 + c * h              # qkv and gate/up inputs, proj input
    # The 2-D rotary runs in fp32 but saves nothing: its multipliers (cos, sin) need no gradient.
    attention = c * 3 * h + c * h + 4 * v.num_heads  # q, k, v as the kernel reads them, its output, logsumexp
    mlp = 4 * c * i                             # gate out, activation out, up out, down_proj's input
    return norms + linears_in + attention + mlp


def block_params(vision: VisionSpec) -> int:
    h, i = vision.hidden_size, vision.intermediate_size
    if vision.kind == "siglip":
        return 4 * (h * h + h) + 2 * h * i + i + h + 4 * h
    return 4 * h * h + 3 * h + h + 3 * (h * i + i) + 2 * h


def saved_bytes(model: ModelSpec, setup: TrainSetup, tower_trains: bool) -> float:
    """What the tower adds to the activations kept through the step (one micro-batch)."""
    if model.vision is None or setup.image_patches <= 0:
        return 0.0
    patches = setup.micro_batch * setup.image_patches
    kept = pixel_bytes(model, patches)
    if tower_trains:
        v = model.vision
        lay = layout(model, setup)
        if setup.checkpointing:
            kept += v.num_layers * patches * lay.stream * v.hidden_size
        else:
            kept += v.num_layers * patches * block_patch_bytes(model, setup)
            if lay.autocast_copies:  # half copies autocast makes of the fp32 weights, kept for backward
                kept += v.num_layers * block_params(v) * lay.compute
        if v.kind == "qwen2_5_vl":
            # the merger: its RMSNorm's fp32 input and the MLP's inputs and GELU on merged tokens
            merged = v.hidden_size * v.merge_size**2
            kept += patches * (4 * v.hidden_size + 4 * lay.compute * v.hidden_size)
            if lay.autocast_copies:
                kept += (merged * merged + merged * v.out_hidden_size) * lay.compute
    return kept


def forward_bytes(model: ModelSpec, setup: TrainSetup) -> float:
    """The working set of one block while the tower runs forward (transient, any setup)."""
    v = model.vision
    if v is None or setup.image_patches <= 0:
        return 0.0
    patches = setup.micro_batch * setup.image_patches
    c = layout(model, setup).compute
    h, i = v.hidden_size, v.intermediate_size
    if v.kind == "siglip":
        return patches * (2 * c * h + max(3 * c * h + 4 * v.num_heads, 2 * c * i))
    # Attention: the residual, the norm's output, qkv, q and k in fp32 for the rotary and four
    # fp32 temporaries of it; or the MLP: the residual, the norm's output and four I-wide tensors.
    return patches * max((5 * c + 24) * h, 2 * c * h + 4 * c * i)


def tower_trains(model: ModelSpec, setup: TrainSetup) -> bool:
    """Full fine-tuning trains every weight; with LoRA the tower trains only when asked."""
    return model.vision is not None and (setup.method == "full" or setup.train_vision_tower)


def frozen_note(model: ModelSpec) -> str:
    """The plan's words for a frozen tower."""
    tower = re.sub(r"\\", "", model.lora_exclude_modules or "the vision tower").removesuffix("..*").rstrip(".")
    return (f"vision tower frozen ({tower}, {model.vision_params:,} parameters with the projector; "
            "--train-vision-tower adapts it too)")
