"""The embedded tiny Llama after a short supervised warm-up: the default start of preference and
reward tasks, which tune a model that already answers.

DPO, KTO and GRPO move a model towards answers it already gives some of the time; from random
weights GRPO's exact-answer reward is 0 for every completion, and a group of zeros carries no
signal. So `embedded:tiny-llama-sft` is `embedded:tiny-llama` (the same tokenizer and config)
trained for a few epochs on the bundled sums with a plain causal-LM loss: it answers about two
held-out sums in five right, which leaves GRPO and DPO room to show their reward rising. It is
built once into the cache beside the base model (about 30 s on two CPU cores), with torch, which
only this build imports; the manifest of SHA-256 digests detects a corrupt copy, as for the base.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

from llmwizard.autotune.embedded import DATASET_PATH, cache_root, ensure_built, ensure_embedded_model

EMBEDDED_SFT_MODEL = "embedded:tiny-llama-sft"
# Bump when the warm-up changes: old caches are then rebuilt beside the new one.
_BUILD_VERSION = "2"
_SEED = 1234
WARMUP_EPOCHS = 60
WARMUP_LR = 3e-3
WARMUP_BATCH = 16
_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]


def warm_model_dir() -> Path:
    return cache_root() / "embedded" / f"tiny-llama-sft-v{_BUILD_VERSION}"


def ensure_warm_model() -> Path:
    """The warmed-up model's directory, built (from the base model, built first) when missing or
    corrupt. One process builds it while the others wait on a lock file (the ranks of a run, test
    workers): each build would take a CPU's half-minute for the same bytes. Planning needs only the
    tokenizer and config, the base model's (llmwizard.autotune.plan.inputs.model_directory), so only
    a launch waits for this."""
    import fcntl

    target = warm_model_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return ensure_built(target, _build)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(directory: Path) -> list[str]:
    import sys

    base = ensure_embedded_model()
    for name in _FILES:
        shutil.copyfile(base / name, directory / name)
    print(f"llmwizard: building {EMBEDDED_SFT_MODEL} once: {WARMUP_EPOCHS} epochs of SFT on the bundled sums "
          "(about 30 s on the CPU)", file=sys.stderr, flush=True)
    _warm_up(base, directory)
    return [*_FILES, "model.safetensors"]


def _warm_up(base: Path, directory: Path) -> None:
    """The embedded SFT recipe in a plain loop: the loss on the answers only, AdamW at WARMUP_LR
    with a cosine decay, WARMUP_EPOCHS passes over every sum."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(_SEED)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rows = [json.loads(line) for line in DATASET_PATH.read_text().splitlines() if line.strip()]
    examples = []
    for row in rows:
        whole = _ids(tokenizer.apply_chat_template(row["messages"], tokenize=True))
        prompt = _ids(tokenizer.apply_chat_template(row["messages"][:1], tokenize=True, add_generation_prompt=True))
        examples.append((whole, len(prompt)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=WARMUP_LR)
    steps = WARMUP_EPOCHS * math.ceil(len(examples) / WARMUP_BATCH)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    model.train()
    for epoch in range(WARMUP_EPOCHS):
        random.Random(_SEED + epoch).shuffle(examples)
        for start in range(0, len(examples), WARMUP_BATCH):
            batch = examples[start:start + WARMUP_BATCH]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([seq + [pad] * (width - len(seq)) for seq, _ in batch])
            mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq, _ in batch])
            labels = ids.masked_fill(mask == 0, -100)
            for row, (_, prompt_len) in enumerate(batch):
                labels[row, :prompt_len] = -100  # the loss on the answer only, as TRL's SFT does
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    model.save_pretrained(directory, safe_serialization=True)


def _ids(encoded: object) -> list[int]:
    """Token ids from apply_chat_template, which returns a list or a BatchEncoding by version."""
    ids: Any = encoded["input_ids"] if hasattr(encoded, "keys") else encoded  # type: ignore[index]
    return [int(token) for token in ids]
