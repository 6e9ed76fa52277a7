"""The embedded tiny Mixture-of-Experts model: a Qwen3-MoE decoder that trains on the CPU anywhere.

`embedded:tiny-moe` has the layout of Qwen3-30B-A3B at toy widths: attention with q/k norms, and in
every layer a sparse MoE block (a top-k router and routed experts stored as fused 3-D tensors,
`mlp.experts.gate_up_proj` [E, 2I, H] and `mlp.experts.down_proj` [E, H, I], as transformers 5.x
keeps them). It is what the tests train under DDP, FSDP2 and ZeRO-3 (with the MoE block as a
leaf module), and with LoRA on attention or on the experts. Like the tiny Llama
(llmwizard.autotune.embedded) it is built on first use into the user cache with `tokenizers`,
`json` and `safetensors.numpy` only, so planning never imports torch; the tokenizer is trained on
the bundled arithmetic data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmwizard.autotune.embedded import (CHAT_TEMPLATE, DATASET_PATH, VOCAB_SIZE, cache_root, ensure_built,
                                         train_tokenizer)

EMBEDDED_MOE_MODEL = "embedded:tiny-moe"

# Bump when anything below changes what is built: old caches are then rebuilt beside the new one.
_BUILD_VERSION = "1"
_SEED = 2468

MOE_MODEL_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,       # a dense MLP's width (unused: every layer is sparse)
    "moe_intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "norm_topk_prob": True,
    "output_router_logits": False,
    "router_aux_loss_coef": 0.001,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "attention_bias": False,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "dtype": "float32",
}


def moe_model_dir() -> Path:
    return cache_root() / "embedded" / f"tiny-moe-v{_BUILD_VERSION}"


def ensure_moe_model() -> Path:
    """The tiny MoE model's directory, built when missing or corrupt."""
    return ensure_built(moe_model_dir(), _build)


def _build(directory: Path) -> list[str]:
    rows = [json.loads(line) for line in DATASET_PATH.read_text().splitlines() if line.strip()]
    train_tokenizer([message["content"] for row in rows for message in row["messages"]], directory,
                    max_length=MOE_MODEL_CONFIG["max_position_embeddings"])
    (directory / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    _build_weights(directory)
    return ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja"]


def _build_weights(directory: Path) -> None:
    """Random init as transformers does for Qwen3-MoE (N(0, initializer_range), norms 1), with the
    tiny Llama's wider embedding and head so LoRA has room (see llmwizard.autotune.embedded)."""
    import numpy as np
    from safetensors.numpy import save_file

    cfg = MOE_MODEL_CONFIG
    rng = np.random.default_rng(_SEED)
    std = cfg["initializer_range"]
    hidden, inter, head_dim = cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["head_dim"]
    experts = cfg["num_experts"]
    q_out, kv_out = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim

    def normal(*shape: int, scale: float = std) -> Any:
        return rng.normal(0.0, scale, size=shape).astype(np.float32)

    tensors: dict[str, Any] = {
        "model.embed_tokens.weight": normal(cfg["vocab_size"], hidden, scale=0.5),
        "lm_head.weight": normal(cfg["vocab_size"], hidden, scale=0.15),
        "model.norm.weight": np.ones(hidden, dtype=np.float32),
    }
    for i in range(cfg["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        tensors.update({
            prefix + "self_attn.q_proj.weight": normal(q_out, hidden),
            prefix + "self_attn.k_proj.weight": normal(kv_out, hidden),
            prefix + "self_attn.v_proj.weight": normal(kv_out, hidden),
            prefix + "self_attn.o_proj.weight": normal(hidden, q_out),
            prefix + "self_attn.q_norm.weight": np.ones(head_dim, dtype=np.float32),
            prefix + "self_attn.k_norm.weight": np.ones(head_dim, dtype=np.float32),
            prefix + "mlp.gate.weight": normal(experts, hidden),
            prefix + "mlp.experts.gate_up_proj": normal(experts, 2 * inter, hidden),
            prefix + "mlp.experts.down_proj": normal(experts, hidden, inter),
            prefix + "input_layernorm.weight": np.ones(hidden, dtype=np.float32),
            prefix + "post_attention_layernorm.weight": np.ones(hidden, dtype=np.float32),
        })
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    generation = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
                  "pad_token_id": cfg["pad_token_id"]}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
