"""Tiny Llama and Gemma model directories, built locally for the distributed tests (no hub).

Each directory is what `save_pretrained` writes for a real checkpoint: config.json, safetensors
weights, and the embedded default's byte-level tokenizer with its chat template, so the
planner, TRL and every launcher treat it exactly like a downloaded model. The two families
differ where the runner must cope: Llama has untied embeddings and `LlamaDecoderLayer`; Gemma
ties embedding and lm_head, scales the embedding by sqrt(hidden) and wraps `GemmaDecoderLayer`
(transformers 5.23 has both GemmaDecoderLayer and Gemma2DecoderLayer; the planner maps
model_type "gemma" to the former, which is the class recipe 1 of REFERENCE.md wraps).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from autotune.embedded import VOCAB_SIZE, ensure_embedded_model

# Small enough that a two-process step takes milliseconds on two cores, wide enough that every
# head and the GQA grouping are real (4 query heads over 2 KV heads).
_DIMS = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
LAYER_CLASSES = {"llama": "LlamaDecoderLayer", "gemma": "GemmaDecoderLayer"}


def build_tiny_model(family: str, directory: Path, seed: int = 0) -> Path:
    """Write a randomly initialised `family` ("llama" or "gemma") model into `directory`."""
    import torch
    from transformers import GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM

    if (directory / "config.json").is_file():
        return directory
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**_DIMS, tie_word_embeddings=False))
    elif family == "gemma":
        model = GemmaForCausalLM(GemmaConfig(**_DIMS, hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True))
    else:
        raise ValueError(f"unknown family {family!r}")
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    source = ensure_embedded_model()
    for name in _TOKENIZER_FILES:
        shutil.copy(source / name, staging / name)
    staging.rename(directory)
    return directory
