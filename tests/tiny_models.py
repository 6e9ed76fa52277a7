"""Tiny Llama and Gemma model directories built locally (no hub), and the helpers that run them.

Each directory is what `save_pretrained` writes for a real checkpoint: config.json, safetensors
weights, and the embedded default's byte-level tokenizer with its chat template, so the
planner, TRL and every launcher treat it exactly like a downloaded model. The two families
differ where the runner must cope: Llama has untied embeddings and `LlamaDecoderLayer`; Gemma
ties embedding and lm_head, scales the embedding by sqrt(hidden) and wraps `GemmaDecoderLayer`
(transformers 5.23 has both GemmaDecoderLayer and Gemma2DecoderLayer; the planner maps
model_type "gemma" to the former, which is the class recipe 1 of REFERENCE.md wraps).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmwizard.autotune.embedded import VOCAB_SIZE, ensure_embedded_model

if TYPE_CHECKING:
    from llmwizard.autotune.plan import Plan

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
    # As for the embedded model: a frozen lm_head at std 0.02 caps every logit near 0.02 * hidden,
    # so LoRA adapters on top could barely move the loss in a few steps. Wider output (and, untied,
    # input) embeddings let LoRA runs show a clearly falling loss, as a pretrained model does.
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(0.0, 0.15)
        if family == "llama":
            model.get_input_embeddings().weight.normal_(0.0, 0.5)
    # A staging folder of this process's own: test workers running side by side (pytest-xdist)
    # may build the same model at once; the first rename wins and the others drop their copy.
    staging = directory.with_name(f"{directory.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    source = ensure_embedded_model()
    for name in _TOKENIZER_FILES:
        shutil.copy(source / name, staging / name)
    try:
        staging.rename(directory)
    except OSError:  # another worker's copy is in place
        shutil.rmtree(staging, ignore_errors=True)
        if not (directory / "config.json").is_file():
            raise
    return directory


# ----------------------------------------------------------------------------- run helpers
# Shared by tests/test_strategies.py and tests/test_launchers.py: plan with the real planner,
# export with the real exporters, start the exported launch.sh exactly as a user would.

# Learning rates at which ten steps show a clearly falling loss on these tiny models
# (measured: LoRA 6.6 -> 4.7, full 6.6 -> 4.6 on Llama; the planner's rule rates are for real models).
LEARNING_RATE = {"lora": 0.02, "full": 0.003}


def tiny_model(family: str) -> Path:
    """A tiny model directory in the test cache (conftest points LLMWIZARD_CACHE at a temp dir)."""
    from llmwizard.autotune.embedded import cache_root

    return build_tiny_model(family, cache_root() / "tiny-models" / family)


def make_plan(*, family: str = "llama", strategy: str = "ddp", launcher: str = "accelerate",
              method: str = "lora", processes: int = 2, nodes: int = 1, max_steps: int = 10,
              checkpointing: bool | None = False, eval_fraction: float = 0.0, **goals: Any) -> Plan:
    from llmwizard.autotune.data.dataset import profile_dataset
    from llmwizard.autotune.embedded import EMBEDDED_DATASET
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.machine.hardware import detect
    from llmwizard.autotune.model.model_spec import load_model_spec
    from llmwizard.autotune.plan.planner import plan
    from llmwizard.autotune.data.tokens import counter_for

    model_dir = tiny_model(family)
    hardware = detect()
    hardware.nodes = nodes
    profile = profile_dataset(EMBEDDED_DATASET, counter_for(model_dir))
    wanted = Goals(strategy=strategy, launcher=launcher, method=method, processes=processes,
                   max_steps=max_steps, checkpointing=checkpointing, eval_fraction=eval_fraction,
                   learning_rate=goals.pop("learning_rate", LEARNING_RATE[method]), **goals)
    return plan(hardware, load_model_spec(str(model_dir)), profile, wanted)


def run_launch_sh(run_dir: Path, cwd: Path, *args: str, env: dict[str, str] | None = None,
                  timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`bash /abs/run/launch.sh ARGS` from another directory, on a free port."""
    from llmwizard.runner.session.launch import free_port

    full_env = dict(os.environ, MAIN_PROCESS_PORT=str(free_port()))
    full_env.update(env or {})
    return run_group(["bash", str(run_dir / "launch.sh"), *args], cwd=cwd, env=full_env, timeout=timeout)


def run_group(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """subprocess.run in a session of its own, so a timeout ends the launcher *and* its ranks.

    subprocess.run's own timeout kills only `bash`; ranks left behind hold its pipes open (so it
    never returns) and keep ports and build locks that hang later launches in the suite.
    """
    import psutil

    child = subprocess.Popen(command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = psutil.Process(child.pid).children(recursive=True)  # elastic ranks have their own sessions
        os.killpg(child.pid, signal.SIGKILL)
        for process in tree:
            with contextlib.suppress(psutil.Error):
                process.kill()
        out, err = child.communicate()
        raise AssertionError(f"{command[-1]} still running after {timeout:.0f} s; its output:\n"
                             + (out + err)[-4000:]) from None
    return subprocess.CompletedProcess(command, child.returncode, out, err)


def strategy_ran(log: str) -> tuple[str, int]:
    """(strategy, world size) from the line rank 0 prints after training."""
    match = re.search(r"^llmwizard: strategy=(\S+) world_size=(\d+)", log, re.MULTILINE)
    assert match, "no strategy line in the log:\n" + log[-3000:]
    return match.group(1), int(match.group(2))


def losses(run_dir: Path) -> list[float]:
    from llmwizard.runner.metrics import iter_logs, read_metrics

    return [loss for _, loss in iter_logs(read_metrics(run_dir / "metrics.jsonl"))]


def assert_loss_falls(values: list[float]) -> None:
    """The last three logged losses average at least 10% below the first two."""
    assert len(values) >= 5, values
    first, last = sum(values[:2]) / 2, sum(values[-3:]) / 3
    assert last < 0.9 * first, f"loss did not fall: {values}"


def launch_until_first_loss(run_dir: Path, timeout: float = 300) -> tuple[Any, list[Any]]:
    """Start `run_dir`'s launch and wait for its first logged loss: the Launch and its rank processes
    (the caller kills the launch when done)."""
    import time

    from llmwizard.runner.session.launch import Launch

    launch = Launch(run_dir)
    launch.start()
    deadline = time.monotonic() + timeout
    while not losses(run_dir) and launch.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    if not losses(run_dir):
        launch.kill()
        raise AssertionError("no step logged:\n" + "\n".join(launch.log_tail(40)))
    ranks = [p for p in launch.process_tree() if "llmwizard.runner.rank.train" in " ".join(p.cmdline())]
    return launch, ranks
