"""The embedded vision-language default: a tiny Qwen2.5-VL and a generated image set, offline.

`embedded:tiny-vision` is a randomly initialised Qwen2.5-VL-style model (a 2-block vision tower,
the merger, a 4-layer language model) with its processor files: the tiny byte-level BPE
tokenizer of `embedded:tiny-llama` trained again with Qwen2.5-VL's vision tokens added, the
Qwen2-VL image processor settings (patch 14, merge 2) and a chat template that renders image
parts. `embedded:tiny-gemma3-vision` is the same idea for Gemma 3: a tiny SigLIP tower, Gemma 3's
projector (average pooling to a fixed number of tokens per image) and a 4-layer Gemma 3 language
model, with a tokenizer carrying Gemma 3's image tokens (`<start_of_image>`, `<end_of_image>`,
`<image_soft_token>`), Gemma 3's image processor settings (one fixed square, no pan and scan) and
a `Gemma3Processor` configuration, so `AutoProcessor` builds it as it builds the real one.
`embedded:shapes` is a set of small PNGs of coloured shapes drawn with PIL, each with a question
and answer in chat messages whose user turn has an image part, plus an `images` column with the
files' paths (relative to the JSONL, as a user's own data would have them).

Both are built on first use into the user cache, like the text model: weights with
`safetensors.numpy`, tokenizer with `tokenizers`, images with PIL; a SHA-256 manifest detects a
corrupt cache. No torch is imported, so `llmwizard plan` stays fast.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from llmwizard.autotune.embedded import (SPECIAL_TOKENS, VOCAB_SIZE, cache_root, ensure_built, train_tokenizer,
                                        word_problems)

EMBEDDED_VISION_MODEL = "embedded:tiny-vision"
EMBEDDED_GEMMA3_MODEL = "embedded:tiny-gemma3-vision"
EMBEDDED_VISION_DATASET = "embedded:shapes"

_BUILD_VERSION = "1"
_SEED = 4321
_NUM_SHAPES = 96
IMAGE_SIDE = 84  # 6 x 6 patches of 14 pixels: 36 patches, 9 image tokens after the 2 x 2 merge

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
_IDS = {token: len(SPECIAL_TOKENS) + i for i, token in enumerate(VISION_TOKENS)}

VISION_MODEL_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "text_config": {
        "model_type": "qwen2_5_vl_text",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        # Multimodal RoPE: 16-wide heads split their 8 frequencies over time, height and width.
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    "vision_config": {
        "model_type": "qwen2_5_vl_vision",
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
        "out_hidden_size": 64,
        "hidden_act": "silu",
        "initializer_range": 0.02,
    },
    "image_token_id": _IDS["<|image_pad|>"],
    "video_token_id": _IDS["<|video_pad|>"],
    "vision_start_token_id": _IDS["<|vision_start|>"],
    "vision_end_token_id": _IDS["<|vision_end|>"],
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "dtype": "float32",
}

# Qwen2-VL's image processor with a small pixel budget: every image becomes 4 to 16 merged tokens.
IMAGE_PROCESSOR: dict[str, Any] = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "merge_size": 2,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 56 * 56, "longest_edge": 112 * 112},
}

def _chat_template(image_placeholder: str, bos: bool = False) -> str:
    """The text template of the tiny models, with image parts rendered as the model's placeholder
    (which its processor expands to the image's tokens)."""
    return (
        ("{{ bos_token }}" if bos else "")
        + "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{{ '<|assistant|>' }}{% generation %}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
        "{% endif %}{{ eos_token }}{% endgeneration %}"
        "{% else %}"
        "{{ '<|' + message['role'] + '|>' }}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ '" + image_placeholder + "' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )


# Qwen2.5-VL's placeholder: the processor expands `<|image_pad|>` to one token per merged patch.
VISION_CHAT_TEMPLATE = _chat_template("<|vision_start|><|image_pad|><|vision_end|>")


# ----------------------------------------------------------------------------- tiny Gemma 3

# Gemma 3's image tokens, named as its tokenizer_config.json names them (boi_token, eoi_token,
# image_token): the chat template writes `<start_of_image>` per image and Gemma3Processor replaces
# it with "\n\n<start_of_image>" + mm_tokens_per_image x `<image_soft_token>` + "<end_of_image>\n\n".
GEMMA3_IMAGE_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                       "image_token": "<image_soft_token>"}
_GEMMA3_IDS = {token: len(SPECIAL_TOKENS) + i for i, token in enumerate(GEMMA3_IMAGE_TOKENS.values())}
GEMMA3_IMAGE_SIDE = 112      # every image is resized to this square: 8 x 8 patches of 14 pixels
GEMMA3_TOKENS_PER_IMAGE = 16  # the projector average-pools the 8 x 8 patches 2 x 2 into 4 x 4 tokens

GEMMA3_MODEL_CONFIG: dict[str, Any] = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "model_type": "gemma3",
    "text_config": {
        "model_type": "gemma3_text",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "initializer_range": 0.02,
        # Gemma 3's local/global attention: three sliding-window layers, then a global one.
        "sliding_window": 128,
        "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_channels": 3,
        "image_size": GEMMA3_IMAGE_SIDE,
        "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": False,  # as in Gemma 3's own config: the projector reads every patch
    },
    "mm_tokens_per_image": GEMMA3_TOKENS_PER_IMAGE,
    "boi_token_index": _GEMMA3_IDS["<start_of_image>"],
    "eoi_token_index": _GEMMA3_IDS["<end_of_image>"],
    "image_token_index": _GEMMA3_IDS["<image_soft_token>"],
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "dtype": "float32",
}

# Gemma 3's image processor (transformers' Gemma3ImageProcessor: resize to one square, rescale,
# normalise to [-1, 1]) at the tiny tower's size; pan and scan off, as Gemma 3 ships it.
GEMMA3_IMAGE_PROCESSOR: dict[str, Any] = {
    "image_processor_type": "Gemma3ImageProcessor",
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "do_pan_and_scan": False,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "rescale_factor": 1 / 255,
    "size": {"height": GEMMA3_IMAGE_SIDE, "width": GEMMA3_IMAGE_SIDE},
}

GEMMA3_CHAT_TEMPLATE = _chat_template(GEMMA3_IMAGE_TOKENS["boi_token"], bos=True)


# ----------------------------------------------------------------------------- dataset

_COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
_SHAPES = ("circle", "square", "triangle")
_QUESTIONS = ("What is in the picture?", "Describe the shape.", "Which shape and colour do you see?")


def shapes_rows(n: int = _NUM_SHAPES, seed: int = _SEED) -> list[dict[str, Any]]:
    """The rows of embedded:shapes (chat messages with an image part, an `images` path each)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        colour, shape = rng.choice(sorted(_COLOURS)), rng.choice(_SHAPES)
        rows.append({
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rng.choice(_QUESTIONS)}]},
                {"role": "assistant", "content": [{"type": "text", "text": f"A {colour} {shape}."}]},
            ],
            "images": [f"images/{i:03d}-{colour}-{shape}.png"],
        })
    return rows


def _draw(path: Path, colour: str, shape: str, rng: random.Random) -> None:
    from PIL import Image, ImageDraw

    side = IMAGE_SIDE
    image = Image.new("RGB", (side, side), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    size = rng.randint(side // 3, side - 16)
    x, y = rng.randint(4, side - size - 4), rng.randint(4, side - size - 4)
    box = [x, y, x + size, y + size]
    if shape == "circle":
        draw.ellipse(box, fill=_COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=_COLOURS[colour])
    else:
        draw.polygon([(x + size // 2, y), (x, y + size), (x + size, y + size)], fill=_COLOURS[colour])
    image.save(path, format="PNG", optimize=False)


def shapes_dir() -> Path:
    return cache_root() / "embedded" / f"shapes-v{_BUILD_VERSION}"


def ensure_shapes_dataset() -> Path:
    """The JSONL file of embedded:shapes (images beside it), built when missing or corrupt."""
    return ensure_built(shapes_dir(), _build_shapes) / "shapes.jsonl"


def _build_shapes(directory: Path) -> list[str]:
    rows = shapes_rows()
    (directory / "images").mkdir()
    rng = random.Random(_SEED + 1)
    for row in rows:
        _, colour, shape = Path(row["images"][0]).stem.split("-")
        _draw(directory / row["images"][0], colour, shape, rng)
    (directory / "shapes.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return ["shapes.jsonl", *(row["images"][0] for row in rows)]


# ----------------------------------------------------------------------------- model

def vision_model_dir() -> Path:
    return cache_root() / "embedded" / f"tiny-vision-v{_BUILD_VERSION}"


def ensure_vision_model() -> Path:
    """The tiny vision-language model's directory, built when missing or corrupt."""
    return ensure_built(vision_model_dir(), _build_model)


def _build_model(directory: Path) -> list[str]:
    _build_tokenizer(directory, VISION_TOKENS, {"extra_special_tokens": VISION_TOKENS}, "Qwen2_5_VLProcessor",
                     VISION_MODEL_CONFIG["text_config"]["max_position_embeddings"])
    _build_weights(directory)
    (directory / "chat_template.jinja").write_text(VISION_CHAT_TEMPLATE)
    processor = {"image_processor": IMAGE_PROCESSOR, "processor_class": "Qwen2_5_VLProcessor"}
    (directory / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "processor_config.json"]


def gemma3_model_dir() -> Path:
    return cache_root() / "embedded" / f"tiny-gemma3-vision-v{_BUILD_VERSION}"


def ensure_gemma3_model() -> Path:
    """The tiny Gemma 3 vision-language model's directory, built when missing or corrupt."""
    return ensure_built(gemma3_model_dir(), _build_gemma3_model)


def _build_gemma3_model(directory: Path) -> list[str]:
    tokens = list(GEMMA3_IMAGE_TOKENS.values())
    # boi_token, eoi_token and image_token become the tokenizer's named attributes (and *_id).
    _build_tokenizer(directory, tokens, {**GEMMA3_IMAGE_TOKENS, "extra_special_tokens": tokens}, "Gemma3Processor",
                     GEMMA3_MODEL_CONFIG["text_config"]["max_position_embeddings"])
    _build_gemma3_weights(directory)
    (directory / "chat_template.jinja").write_text(GEMMA3_CHAT_TEMPLATE)
    processor = {"image_processor": GEMMA3_IMAGE_PROCESSOR, "image_seq_length": GEMMA3_TOKENS_PER_IMAGE,
                 "processor_class": "Gemma3Processor"}
    (directory / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "processor_config.json"]


def _build_tokenizer(directory: Path, image_tokens: list[str], named: dict[str, Any], processor_class: str,
                     max_length: int) -> None:
    """The text model's tokenizer, trained on its data and the captions, with the image tokens."""
    texts = [m["content"] for row in word_problems() for m in row["messages"]]
    texts += [part["text"] for row in shapes_rows() for m in row["messages"] for part in m["content"]
              if part["type"] == "text"]
    train_tokenizer(texts, directory, max_length=max_length, extra_tokens=image_tokens, named=named,
                    processor_class=processor_class)


def _build_weights(directory: Path) -> None:
    """Random init as transformers does: N(0, initializer_range) linears, zero biases, unit norms."""
    import numpy as np
    from safetensors.numpy import save_file

    text, vision = VISION_MODEL_CONFIG["text_config"], VISION_MODEL_CONFIG["vision_config"]
    rng = np.random.default_rng(_SEED)
    std = text["initializer_range"]

    def normal(*shape: int, scale: float = std) -> Any:
        return rng.normal(0.0, scale, size=shape).astype(np.float32)

    def zeros(n: int) -> Any:
        return np.zeros(n, dtype=np.float32)

    def ones(n: int) -> Any:
        return np.ones(n, dtype=np.float32)

    vh, vi = vision["hidden_size"], vision["intermediate_size"]
    patch, temporal, merge = vision["patch_size"], vision["temporal_patch_size"], vision["spatial_merge_size"]
    merged = vh * merge * merge
    tensors: dict[str, Any] = {
        "model.visual.patch_embed.proj.weight": normal(vh, vision["in_channels"], temporal, patch, patch),
        "model.visual.merger.ln_q.weight": ones(vh),
        "model.visual.merger.mlp.0.weight": normal(merged, merged),
        "model.visual.merger.mlp.0.bias": zeros(merged),
        "model.visual.merger.mlp.2.weight": normal(vision["out_hidden_size"], merged),
        "model.visual.merger.mlp.2.bias": zeros(vision["out_hidden_size"]),
    }
    for i in range(vision["depth"]):
        p = f"model.visual.blocks.{i}."
        tensors.update({
            p + "norm1.weight": ones(vh), p + "norm2.weight": ones(vh),
            p + "attn.qkv.weight": normal(3 * vh, vh), p + "attn.qkv.bias": zeros(3 * vh),
            p + "attn.proj.weight": normal(vh, vh), p + "attn.proj.bias": zeros(vh),
            p + "mlp.gate_proj.weight": normal(vi, vh), p + "mlp.gate_proj.bias": zeros(vi),
            p + "mlp.up_proj.weight": normal(vi, vh), p + "mlp.up_proj.bias": zeros(vi),
            p + "mlp.down_proj.weight": normal(vh, vi), p + "mlp.down_proj.bias": zeros(vh),
        })
    hidden, inter, vocab = text["hidden_size"], text["intermediate_size"], text["vocab_size"]
    head_dim = hidden // text["num_attention_heads"]
    q_out, kv_out = text["num_attention_heads"] * head_dim, text["num_key_value_heads"] * head_dim
    # As for tiny-llama: larger untied embeddings and LM head give LoRA room to learn.
    tensors["model.language_model.embed_tokens.weight"] = normal(vocab, hidden, scale=0.5)
    tensors["lm_head.weight"] = normal(vocab, hidden, scale=0.15)
    for i in range(text["num_hidden_layers"]):
        p = f"model.language_model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": normal(q_out, hidden), p + "self_attn.q_proj.bias": zeros(q_out),
            p + "self_attn.k_proj.weight": normal(kv_out, hidden), p + "self_attn.k_proj.bias": zeros(kv_out),
            p + "self_attn.v_proj.weight": normal(kv_out, hidden), p + "self_attn.v_proj.bias": zeros(kv_out),
            p + "self_attn.o_proj.weight": normal(hidden, q_out),
            p + "mlp.gate_proj.weight": normal(inter, hidden),
            p + "mlp.up_proj.weight": normal(inter, hidden),
            p + "mlp.down_proj.weight": normal(hidden, inter),
            p + "input_layernorm.weight": ones(hidden),
            p + "post_attention_layernorm.weight": ones(hidden),
        })
    tensors["model.language_model.norm.weight"] = ones(hidden)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(VISION_MODEL_CONFIG, indent=2) + "\n")
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def _build_gemma3_weights(directory: Path) -> None:
    """Random init as transformers does (N(0, initializer_range) linears, zero biases, Gemma's
    RMSNorm weights at zero: it scales by 1 + weight), except the projector: transformers starts it
    at zero, which would hide the images from the language model, so it is random here as a
    pretrained one is."""
    import numpy as np
    from safetensors.numpy import save_file

    text, vision = GEMMA3_MODEL_CONFIG["text_config"], GEMMA3_MODEL_CONFIG["vision_config"]
    rng = np.random.default_rng(_SEED + 2)
    std = text["initializer_range"]

    def normal(*shape: int, scale: float = std) -> Any:
        return rng.normal(0.0, scale, size=shape).astype(np.float32)

    def zeros(*shape: int) -> Any:
        return np.zeros(shape, dtype=np.float32)

    def ones(n: int) -> Any:
        return np.ones(n, dtype=np.float32)

    vh, vi, patch = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    channels, grid = vision["num_channels"], vision["image_size"] // vision["patch_size"]
    v = "model.vision_tower.vision_model."
    tensors: dict[str, Any] = {
        # SigLIP's patch embedding is a Conv2d with a bias; LeCun-normal keeps its output near unit scale.
        v + "embeddings.patch_embedding.weight": normal(vh, channels, patch, patch,
                                                        scale=(channels * patch * patch) ** -0.5),
        v + "embeddings.patch_embedding.bias": zeros(vh),
        v + "embeddings.position_embedding.weight": normal(grid * grid, vh, scale=vh ** -0.5),
        v + "post_layernorm.weight": ones(vh), v + "post_layernorm.bias": zeros(vh),
    }
    for i in range(vision["num_hidden_layers"]):
        p = f"{v}encoder.layers.{i}."
        tensors.update({
            p + "layer_norm1.weight": ones(vh), p + "layer_norm1.bias": zeros(vh),
            p + "layer_norm2.weight": ones(vh), p + "layer_norm2.bias": zeros(vh),
            p + "mlp.fc1.weight": normal(vi, vh), p + "mlp.fc1.bias": zeros(vi),
            p + "mlp.fc2.weight": normal(vh, vi), p + "mlp.fc2.bias": zeros(vh),
        })
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            tensors[f"{p}self_attn.{name}.weight"] = normal(vh, vh)
            tensors[f"{p}self_attn.{name}.bias"] = zeros(vh)
    hidden, inter, vocab = text["hidden_size"], text["intermediate_size"], text["vocab_size"]
    head_dim = text["head_dim"]
    q_out, kv_out = text["num_attention_heads"] * head_dim, text["num_key_value_heads"] * head_dim
    # The projector: RMSNorm over the pooled patches, then a plain (vision x text) matrix.
    tensors["model.multi_modal_projector.mm_soft_emb_norm.weight"] = zeros(vh)
    tensors["model.multi_modal_projector.mm_input_projection_weight"] = normal(vh, hidden, scale=0.5 * vh ** -0.5)
    # As for tiny-llama: larger untied embeddings and LM head give LoRA room to learn (Gemma scales
    # the embedding by sqrt(hidden) = 8, so 0.0625 here is 0.5 as the language model sees it).
    tensors["model.language_model.embed_tokens.weight"] = normal(vocab, hidden, scale=0.5 / hidden ** 0.5)
    tensors["lm_head.weight"] = normal(vocab, hidden, scale=0.15)
    for i in range(text["num_hidden_layers"]):
        p = f"model.language_model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": normal(q_out, hidden),
            p + "self_attn.k_proj.weight": normal(kv_out, hidden),
            p + "self_attn.v_proj.weight": normal(kv_out, hidden),
            p + "self_attn.o_proj.weight": normal(hidden, q_out),
            p + "self_attn.q_norm.weight": zeros(head_dim),
            p + "self_attn.k_norm.weight": zeros(head_dim),
            p + "mlp.gate_proj.weight": normal(inter, hidden),
            p + "mlp.up_proj.weight": normal(inter, hidden),
            p + "mlp.down_proj.weight": normal(hidden, inter),
        })
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            tensors[f"{p}{norm}.weight"] = zeros(hidden)
    tensors["model.language_model.norm.weight"] = zeros(hidden)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(GEMMA3_MODEL_CONFIG, indent=2) + "\n")
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


# ----------------------------------------------------------------------------- cache

def ensure_embedded(name: str | None) -> Path:
    """The folder of an embedded model by name (the text default when None), built once."""
    if name == EMBEDDED_VISION_MODEL:
        return ensure_vision_model()
    if name == EMBEDDED_GEMMA3_MODEL:
        return ensure_gemma3_model()
    from llmwizard.autotune.embedded.moe import EMBEDDED_MOE_MODEL, ensure_moe_model

    if name == EMBEDDED_MOE_MODEL:
        return ensure_moe_model()
    from llmwizard.autotune.embedded.warm import EMBEDDED_SFT_MODEL, ensure_warm_model

    if name == EMBEDDED_SFT_MODEL:
        return ensure_warm_model()
    from llmwizard.autotune.embedded import ensure_embedded_model

    return ensure_embedded_model()
