"""The planner's decisions over a matrix of model x hardware x method x dataset size.

    python bench/plan_matrix.py [--reasons]

One row per case: strategy, micro-batch x accumulation, checkpointing, precision, the per-GPU
estimate against the budget, and the planning time; with --reasons, the strategy's reason too.
Cases that cannot fit print the planner's message (what it would take). Pure planning: nothing
is launched, no torch is imported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmwizard.autotune.dataset import DatasetProfile  # noqa: E402
from llmwizard.autotune.errors import UserError  # noqa: E402
from llmwizard.autotune.goals import Goals  # noqa: E402
from llmwizard.autotune.hardware import GiB, from_spec  # noqa: E402
from llmwizard.autotune.model_spec import load_model_spec  # noqa: E402
from llmwizard.autotune.planner import plan  # noqa: E402


def dataset(examples: int, mean: float, p99: int) -> DatasetProfile:
    return DatasetProfile(source=f"synthetic-{examples}", format="messages", num_examples=examples,
                          measured=examples, tokenizer="synthetic", exact_tokens=True, mean_tokens=mean,
                          p50_tokens=int(mean), p90_tokens=p99, p95_tokens=p99, p99_tokens=p99,
                          max_tokens=p99, total_tokens=int(mean * examples), histogram=[(1, p99, examples)])


DATASETS = {"small": dataset(600, 350.0, 1000), "large": dataset(50_000, 900.0, 2000)}
CASES = [
    ("llama-3.2-1b", "1xT4", "lora", "small"),
    ("llama-3.2-1b", "1xRTX4090", "full", "small"),
    ("gemma-2-2b", "1xL4", "lora", "large"),
    ("qwen2.5-7b", "1xRTX4090", "lora", "small"),
    ("qwen2.5-7b", "1xRTX4090", "qlora", "large"),
    ("llama-3.1-8b", "1xRTX4090", "lora", "large"),
    ("llama-3.1-8b", "1xA100-80GB", "full", "large"),
    ("gemma-2b", "4xRTX4090", "lora", "small"),
    ("llama-3.1-8b", "4xRTX4090", "full", "large"),
    ("llama-3.1-8b", "8xH100-80GB", "full", "large"),
    ("llama-3.1-8b", "2x8xH100-80GB", "full", "large"),
    ("gemma-3-4b", "8xH100-80GB", "lora", "large"),
    ("qwen2.5-vl-7b", "4xA100-80GB", "lora", "large"),
    ("mistral-7b", "2xRTX3090", "lora", "large"),
    ("gemma-2-27b", "2xL40S", "qlora", "large"),
    ("qwen2.5-32b", "1xH100-80GB", "qlora", "large"),
    ("llama-3.1-70b", "8xH100-80GB", "lora", "large"),
    ("llama-3.1-70b", "8xH100-80GB", "full", "large"),
    ("llama-3.1-70b", "1xRTX4090", "lora", "large"),
    ("llama-3.1-70b", "1xH100-80GB", "qlora", "large"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reasons", action="store_true", help="print each plan's strategy reason")
    args = parser.parse_args()
    header = (f"{'model':<15}{'hardware':<15}{'method':<7}{'data':<6}{'strategy':<10}{'micro x ga':<11}"
              f"{'ckpt':<5}{'prec':<5}{'len':>5}{'GiB/GPU':>9}{'budget':>8}{'ms':>6}")
    print(header)
    print("-" * len(header))
    for name, spec, method, size in CASES:
        start = time.perf_counter()
        model = load_model_spec(name)
        try:
            p = plan(from_spec(spec), model, DATASETS[size], Goals(method=method, dataset_size=size))
        except UserError as err:
            ms = (time.perf_counter() - start) * 1000
            print(f"{name:<15}{spec:<15}{method:<7}{size:<6}does not fit ({ms:.0f} ms): {err.fix}")
            continue
        ms = (time.perf_counter() - start) * 1000
        strategy = "hsdp" if p.hybrid_shard else p.strategy
        if p.offload != "none":
            strategy += "+off"
        print(f"{name:<15}{spec:<15}{method:<7}{size:<6}{strategy:<10}{f'{p.micro_batch} x {p.grad_accum}':<11}"
              f"{'on' if p.activation_checkpointing else 'off':<5}{p.precision:<5}{p.max_length:>5}"
              f"{p.estimate.total / GiB:>9.1f}{p.estimate.budget / GiB:>8.1f}{ms:>6.0f}")
        if args.reasons:
            print(f"    {p.reasons['strategy']}")


if __name__ == "__main__":
    main()
