"""The embedded default: a tiny Llama and a bundled SFT dataset, so llmwizard trains offline anywhere.

The dataset is sums, shaped as `llmwizard try` asks them (user "12+7=", assistant "19"),
generated deterministically and shipped as `data/arithmetic.jsonl`; `generate_examples()`
reproduces it byte for byte. Each sum appears once, so the run's held-out split holds sums the
model never trains on, and the exact-answer rate at the end of a run (llmwizard.runner.rank.samples)
shows whether it learned to add rather than to recite. The model is built on first use into the
user's cache: a byte-level BPE tokenizer trained on the bundled data (digits kept single), a Llama
config and random weights, written with `tokenizers`, `json` and `safetensors.numpy` only, so the
CLI never imports torch to build it. A manifest of SHA-256 digests detects a corrupt cache, which
is rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from llmwizard.autotune.errors import UserError

EMBEDDED_MODEL = "embedded:tiny-llama"
EMBEDDED_DATASET = "embedded:arithmetic"
# The same sums for the preference and reward tasks (llmwizard.autotune.embedded.task_data).
EMBEDDED_PAIRS = "embedded:arithmetic-pairs"          # DPO, ORPO
EMBEDDED_UNPAIRED = "embedded:arithmetic-unpaired"    # KTO
EMBEDDED_PROMPTS = "embedded:arithmetic-prompts"      # GRPO

# Bump when anything below changes what is built: old caches are then rebuilt beside the new one.
_BUILD_VERSION = "2"
_SEED = 1234
# Operands 0.._MAX_OPERAND: sums a random-init model learns in the default run's ~1000 steps.
_MAX_OPERAND = 30
# Under 1000, so the bundled data is a "small" dataset by Google's rule (llmwizard.autotune.data.rules).
_NUM_EXAMPLES = 900

DATA_DIR = Path(__file__).parent / "data"
DATASET_PATH = DATA_DIR / "arithmetic.jsonl"

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
# The bundled data supports about 300 BPE tokens; the embedding is padded to a multiple of 64.
VOCAB_SIZE = 320

MODEL_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "dtype": "float32",
}

# Roles become special tokens; `{% generation %}` marks the assistant text so TRL's
# assistant_only_loss can mask the prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

_UNITS = [
    ("km", "m", 1000), ("m", "cm", 100), ("kg", "g", 1000), ("h", "min", 60),
    ("min", "s", 60), ("L", "mL", 1000), ("day", "h", 24), ("week", "day", 7),
]


def generate_examples(n: int = _NUM_EXAMPLES, seed: int = _SEED) -> list[dict[str, Any]]:
    """The bundled dataset: `n` different sums "a+b=" -> "a+b's value" with operands 0.._MAX_OPERAND,
    in a seeded order. Distinct sums keep the held-out split honest (no sum is both trained on and
    scored); the bare "12+7=" form is what a newcomer types into `llmwizard try`."""
    sums = [(a, b) for a in range(_MAX_OPERAND + 1) for b in range(_MAX_OPERAND + 1)]
    if not 0 < n <= len(sums):
        raise ValueError(f"generate_examples: n must be 1..{len(sums)} (the distinct sums), not {n}")
    random.Random(seed).shuffle(sums)
    return [{"messages": [
        {"role": "user", "content": f"{a}+{b}="},
        {"role": "assistant", "content": str(a + b)},
    ]} for a, b in sums[:n]]


def word_problems(n: int = 400, seed: int = _SEED) -> list[dict[str, Any]]:
    """Arithmetic and unit conversions in words: the texts the embedded vision models' tokenizers
    are trained on (llmwizard.autotune.embedded.vision), whose questions are words too."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        kind = rng.choice(["add", "sub", "mul", "convert"])
        if kind == "add":
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            question, answer = f"What is {a} + {b}?", f"{a} + {b} = {a + b}"
        elif kind == "sub":
            a = rng.randint(0, 99)
            b = rng.randint(0, a)
            question, answer = f"What is {a} - {b}?", f"{a} - {b} = {a - b}"
        elif kind == "mul":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            question, answer = f"What is {a} x {b}?", f"{a} x {b} = {a * b}"
        else:
            big, small, factor = rng.choice(_UNITS)
            value = rng.randint(1, 20)
            question, answer = f"Convert {value} {big} to {small}.", f"{value} {big} = {value * factor} {small}"
        rows.append({"messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]})
    return rows


def dataset_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def cache_root() -> Path:
    """`$LLMWIZARD_CACHE`, else `$XDG_CACHE_HOME/llmwizard`, else `~/.cache/llmwizard`.

    A cache that cannot be used (a file where the folder should be, no write access, a read-only
    file system) is worked around: a per-user folder in the system's temporary directory serves
    instead, with a warning on stderr that names the path and the fix. The fallback's name is fixed,
    so the ranks of a run, which resolve the cache on their own, agree with the parent process.
    Because the temporary directory is shared, the fallback must be private (`private_folder_problem`):
    otherwise another user could plant a link or a folder there and have models built where they
    can change them."""
    configured, source = _configured_cache()
    return _usable_cache(configured, source, os.getuid() if hasattr(os, "getuid") else None)


def _configured_cache() -> tuple[Path, str]:
    if os.environ.get("LLMWIZARD_CACHE"):
        return Path(os.environ["LLMWIZARD_CACHE"]), "$LLMWIZARD_CACHE"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "llmwizard", "$XDG_CACHE_HOME"
    return Path.home() / ".cache" / "llmwizard", "the default"


@functools.lru_cache(maxsize=8)
def _usable_cache(configured: Path, source: str, uid: int | None) -> Path:
    problem = _cache_problem(configured)
    if problem is None:
        return configured
    fallback = Path(tempfile.gettempdir()) / f"llmwizard-cache-{uid if uid is not None else 'user'}"
    fix = "set LLMWIZARD_CACHE to a folder you own and can write to"
    fallback_problem = private_folder_problem(fallback, uid)
    if fallback_problem is not None:
        raise UserError(f"The cache folder {configured} ({source}) {problem}, and the fallback {fallback} "
                        f"{fallback_problem}. Nothing was built there.", title="Cache",
                        fix=fix[0].upper() + fix[1:] + f". If {fallback} is yours, remove it and llmwizard makes it "
                        "again, private; if it is not, tell the machine's administrator.")
    print(f"llmwizard: warning: the cache folder {configured} ({source}) {problem}; using {fallback} "
          f"instead. Fix: {fix}.", file=sys.stderr)
    return fallback


def _cache_problem(path: Path) -> str | None:
    """Why `path` cannot serve as the cache folder (None when it can), creating it if needed."""
    if path.exists() and not path.is_dir():
        return "is a file, not a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot be created ({exc.strerror or exc})"
    return _write_problem(path)


def private_folder_problem(path: Path, uid: int | None) -> str | None:
    """Why `path`, a folder of this user's inside a shared temporary directory, cannot be used
    (None when it can), creating it with mode 0o700 when missing.

    A shared temporary directory lets every user create names in it, so a name fixed in advance
    may already be taken: a symbolic link to a folder someone else controls, or their own folder.
    Only a real folder (checked with lstat, no link followed) that this user owns and that no one
    else can write to is used. The directory holding it must not let other users rename it away
    (world-writable without the sticky bit). `uid` None: a system without owners (Windows)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot be created ({exc.strerror or exc})"
    try:
        info = os.lstat(path)
        holder = os.lstat(path.parent)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISLNK(info.st_mode):
        return f"is a symbolic link (to {os.readlink(path)}), not a folder of yours"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a folder"
    if uid is not None:
        if info.st_uid != uid:
            return f"belongs to another user (uid {info.st_uid}, you are uid {uid})"
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return (f"can be written by other users (mode {stat.S_IMODE(info.st_mode):o}; a cache there must be "
                    "mode 700)")
        if holder.st_mode & stat.S_IWOTH and not holder.st_mode & stat.S_ISVTX:
            return (f"is in {path.parent}, which every user can write and which lacks the sticky bit (another "
                    "user could replace the folder)")
    return _write_problem(path)


def _write_problem(path: Path) -> str | None:
    """Why this process cannot write in the folder `path` (None when it can)."""
    if not os.access(path, os.W_OK | os.X_OK):
        return "is not writable"
    try:  # root passes os.access on a read-only file system; a real write tells
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        return f"is not writable ({exc.strerror or exc})"
    return None


def embedded_model_dir() -> Path:
    return cache_root() / "embedded" / f"tiny-llama-v{_BUILD_VERSION}"


def ensure_embedded_model() -> Path:
    """Return the embedded model's directory, building it when missing or corrupt."""
    return ensure_built(embedded_model_dir(), _build)


def ensure_built(target: Path, build: Callable[[Path], list[str]]) -> Path:
    """`target`, built by `build` (which returns the names of the files it wrote) when missing or
    corrupt: in a staging folder beside it, checked by a manifest of SHA-256 digests, and moved
    into place with one rename, so a concurrent reader sees the old folder or the whole new one."""
    if _verify(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        names = build(staging)
        manifest = {name: _sha256(staging / name) for name in names}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():  # a file or link where the model folder belongs
            target.unlink()
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if _verify(target):  # another process finished the same build first
            return target
        raise
    return target


def _verify(directory: Path) -> bool:
    manifest = directory / "manifest.json"
    try:
        digests = json.loads(manifest.read_text())
        return bool(digests) and all(
            _sha256(directory / name) == digest for name, digest in digests.items()
        )
    except (OSError, ValueError, AttributeError):
        return False


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(directory: Path) -> list[str]:
    rows = [json.loads(line) for line in DATASET_PATH.read_text().splitlines() if line.strip()]
    train_tokenizer([message["content"] for row in rows for message in row["messages"]], directory,
                    max_length=MODEL_CONFIG["max_position_embeddings"])
    (directory / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    _build_weights(directory)
    return ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja"]


def train_tokenizer(texts: list[str], directory: Path, *, max_length: int, extra_tokens: list[str] | None = None,
                    named: dict[str, Any] | None = None, processor_class: str | None = None) -> None:
    """A byte-level BPE tokenizer of at most VOCAB_SIZE tokens trained on `texts`, written to
    `directory` as tokenizer.json and tokenizer_config.json. `extra_tokens`: special tokens after
    the usual ones (a vision model's image tokens); `named`: more named tokens for the config;
    `processor_class`: the processor that loads it, for a vision-language model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # Single digits keep arithmetic learnable; byte-level keeps every string encodable.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS + (extra_tokens or []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    if tokenizer.get_vocab_size() > VOCAB_SIZE:
        raise RuntimeError(f"embedded tokenizer has {tokenizer.get_vocab_size()} tokens, over {VOCAB_SIZE}")
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "backend": "tokenizers",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        **(named or {}),
        "model_max_length": max_length,
        "add_bos_token": False,
        "add_eos_token": False,
        **({"processor_class": processor_class} if processor_class else {}),
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _build_weights(directory: Path) -> None:
    """Random init as transformers does for Llama: N(0, initializer_range), RMSNorm weights 1."""
    import numpy as np
    from safetensors.numpy import save_file

    cfg = MODEL_CONFIG
    rng = np.random.default_rng(_SEED)
    std = cfg["initializer_range"]
    hidden, inter, head_dim = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q_out = cfg["num_attention_heads"] * head_dim
    kv_out = cfg["num_key_value_heads"] * head_dim

    def normal(*shape: int) -> Any:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    # A frozen lm_head at std 0.02 caps every logit near 0.02 * hidden, so a LoRA on top could
    # never make a confident prediction. Untied, larger input embeddings and a wider lm_head give
    # the adapters room while the first loss stays near ln(vocab), as for a real model.
    def scaled(scale: float, *shape: int) -> Any:
        return rng.normal(0.0, scale, size=shape).astype(np.float32)

    tensors: dict[str, Any] = {
        "model.embed_tokens.weight": scaled(0.5, cfg["vocab_size"], hidden),
        "lm_head.weight": scaled(0.15, cfg["vocab_size"], hidden),
    }
    for i in range(cfg["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        tensors.update({
            prefix + "self_attn.q_proj.weight": normal(q_out, hidden),
            prefix + "self_attn.k_proj.weight": normal(kv_out, hidden),
            prefix + "self_attn.v_proj.weight": normal(kv_out, hidden),
            prefix + "self_attn.o_proj.weight": normal(hidden, q_out),
            prefix + "mlp.gate_proj.weight": normal(inter, hidden),
            prefix + "mlp.up_proj.weight": normal(inter, hidden),
            prefix + "mlp.down_proj.weight": normal(hidden, inter),
            prefix + "input_layernorm.weight": np.ones(hidden, dtype=np.float32),
            prefix + "post_attention_layernorm.weight": np.ones(hidden, dtype=np.float32),
        })
    tensors["model.norm.weight"] = np.ones(hidden, dtype=np.float32)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    generation = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
                  "pad_token_id": cfg["pad_token_id"]}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
