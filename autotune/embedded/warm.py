"""The embedded tiny Llama after a short supervised warm-up: the default start of preference and
reward tasks, which tune a model that already answers.

DPO, KTO and GRPO move a model towards answers it already gives some of the time; from random
weights GRPO's exact-answer reward is 0 for every completion, and a group of zeros carries no
signal. So `embedded:tiny-llama-sft` is `embedded:tiny-llama` (the same tokenizer and config)
trained for a few epochs on the bundled sums with a plain causal-LM loss: it answers about two
held-out sums in five right, which leaves GRPO and DPO room to show their reward rising. It is
built once into the cache beside the base model (about 15 s on two CPU cores), with torch, which
only this build imports; the manifest of SHA-256 digests detects a corrupt copy, as for the base.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from llmwizard.autotune.embedded import DATASET_PATH, cache_root, ensure_built, ensure_embedded_model

EMBEDDED_SFT_MODEL = "embedded:tiny-llama-sft"
# Bump when the warm-up changes: old caches are then rebuilt beside the new one.
_BUILD_VERSION = "1"
_SEED = 1234
WARMUP_EPOCHS = 30
WARMUP_LR = 3e-3
WARMUP_BATCH = 16
_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]


def warm_model_dir() -> Path:
    return cache_root() / "embedded" / f"tiny-llama-sft-v{_BUILD_VERSION}"


def ensure_warm_model() -> Path:
    """The warmed-up model's directory, built (from the base model, built first) when missing or corrupt."""
    return ensure_built(warm_model_dir(), _build)


def _build(directory: Path) -> list[str]:
    import sys

    base = ensure_embedded_model()
    for name in _FILES:
        shutil.copyfile(base / name, directory / name)
    print(f"llmwizard: building {EMBEDDED_SFT_MODEL} once: {WARMUP_EPOCHS} epochs of SFT on the bundled sums "
          "(about 15 s on the CPU)", file=sys.stderr, flush=True)
    _warm_up(base, directory)
    return [*_FILES, "model.safetensors"]


def _warm_up(base: Path, directory: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(_SEED)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rows = [json.loads(line) for line in DATASET_PATH.read_text().splitlines() if line.strip()]
    sequences = []
    for row in rows:
        ids = tokenizer.apply_chat_template(row["messages"], tokenize=True)
        sequences.append(list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=WARMUP_LR)
    model.train()
    for epoch in range(WARMUP_EPOCHS):
        random.Random(_SEED + epoch).shuffle(sequences)
        for start in range(0, len(sequences), WARMUP_BATCH):
            batch = sequences[start:start + WARMUP_BATCH]
            width = max(len(s) for s in batch)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in batch])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(directory, safe_serialization=True)
