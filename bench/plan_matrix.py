"""The planner's decisions over a matrix of model x hardware x method x dataset size.

    python bench/plan_matrix.py [--reasons]

One row per case: strategy, micro-batch x accumulation, checkpointing, precision, optimizer, the
savers (cp<N>: a sequence split over N GPUs; act-off: activation offloading; packed: padding-free
packing), the per-GPU estimate against the budget, and the planning time; with --reasons, the
strategy's reason and the reasons of every saver in the plan. The second table is issue 15's
cases (memory savers and long context), always with their reasons.
Cases that cannot fit print the planner's message (what it would take). Pure planning: nothing
is launched, no torch is imported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmwizard.autotune.data.dataset import DatasetProfile  # noqa: E402
from llmwizard.autotune.errors import UserError  # noqa: E402
from llmwizard.autotune.goals import Goals  # noqa: E402
from llmwizard.autotune.machine.hardware import GiB, from_spec  # noqa: E402
from llmwizard.autotune.model.model_spec import load_model_spec  # noqa: E402
from llmwizard.autotune.plan.planner import plan  # noqa: E402


def dataset(examples: int, mean: float, p99: int) -> DatasetProfile:
    return DatasetProfile(source=f"synthetic-{examples}", format="messages", num_examples=examples,
                          measured=examples, tokenizer="synthetic", exact_tokens=True, mean_tokens=mean,
                          p50_tokens=int(mean), p90_tokens=p99, p95_tokens=p99, p99_tokens=p99,
                          max_tokens=p99, total_tokens=int(mean * examples), histogram=[(1, p99, examples)])


DATASETS = {"small": dataset(600, 350.0, 1000), "large": dataset(50_000, 900.0, 2000),
            "long": dataset(2000, 60000.0, 120000), "32k": dataset(5000, 12000.0, 32000)}
# (model, hardware, method, data, extra goals): the savers' cases
SAVER_CASES = [
    ("llama-3.1-8b", "1xH100-80GB", "full", "large", {}),
    ("llama-3.1-8b", "1xA100-80GB,ram=64GB", "full", "large", {"optimizer": "torchao_adamw_8bit"}),
    ("llama-3.1-8b", "1xRTX4090", "full", "large", {}),
    ("llama-3.1-8b", "1xRTX4090,ram=128GB", "full", "large", {}),
    ("llama-3.1-8b", "1xRTX5090,ram=64GB", "full", "large", {}),
    ("llama-3.1-8b", "1xA100-40GB,ram=64GB", "full", "large", {}),
    ("llama-3.1-8b", "8xH100-80GB", "full", "large", {"optimizer": "galore_adamw", "precision": "pure_bf16"}),
    ("llama-3.1-8b", "8xH100-80GB", "full", "large", {"optimizer": "apollo_adamw", "precision": "pure_bf16"}),
    ("gemma-3-4b", "1xH100-80GB", "lora", "long", {"max_length": 122880}),
    ("gemma-3-4b", "8xH100-80GB", "lora", "long", {"max_length": 122880}),
    ("gemma-3-4b", "1xA100-40GB", "lora", "long", {"max_length": 65536}),
    ("llama-3.1-70b", "8xH100-80GB", "lora", "32k", {"max_length": 32768}),
    ("qwen2.5-7b", "8xH100-80GB", "full", "large", {"max_length": 8192}),
    ("qwen2.5-7b", "8xH100-80GB", "full", "large", {"max_length": 8192, "packing": True}),
    ("qwen2.5-7b", "1xH100-80GB", "lora", "large", {}),
    ("qwen2.5-7b", "1xH100-80GB", "lora", "large", {"liger_kernel": True}),
]
# (effective_batch has a reason only when AdaLomo sets it; learning_rate is shown for AdaLomo too)
SAVER_REASONS = ("optimizer", "precision", "effective_batch", "context_parallel", "activation_offloading", "packing",
                 "liger_kernel", "schedule")
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
    table([(name, spec, method, size, {}) for name, spec, method, size in CASES], args.reasons)
    print()
    print("Memory savers and long context (issue 15)")
    table(SAVER_CASES, True, SAVER_REASONS)


def table(cases: list, reasons: bool, extra: tuple[str, ...] = ()) -> None:
    header = (f"{'model':<15}{'hardware':<22}{'method':<7}{'data':<6}{'strategy':<10}{'savers':<14}{'micro x ga':<11}"
              f"{'ckpt':<5}{'prec':<10}{'optimizer':<19}{'len':>7}{'GiB/GPU':>9}{'budget':>8}{'ms':>6}")
    print(header)
    print("-" * len(header))
    for name, spec, method, size, goals in cases:
        start = time.perf_counter()
        model = load_model_spec(name)
        try:
            p = plan(from_spec(spec), model, DATASETS[size], Goals(method=method, dataset_size="large" if size in (
                "long", "32k") else size, **goals))
        except UserError as err:
            ms = (time.perf_counter() - start) * 1000
            print(f"{name:<15}{spec:<22}{method:<7}{size:<6}does not fit ({ms:.0f} ms): {err.message} {err.fix}"
                  if extra else f"{name:<15}{spec:<22}{method:<7}{size:<6}does not fit ({ms:.0f} ms): {err.fix}")
            continue
        ms = (time.perf_counter() - start) * 1000
        strategy = "hsdp" if p.hybrid_shard else p.strategy
        if p.offload != "none":
            strategy += "+off"
        savers = ",".join(word for word, on in ((f"cp{p.context_parallel}", p.context_parallel > 1),
                                                ("act-off", p.activation_offloading), ("packed", p.packing),
                                                ("liger", p.liger_kernel)) if on)
        print(f"{name:<15}{spec:<22}{method:<7}{size:<6}{strategy:<10}{savers or '-':<14}"
              f"{f'{p.micro_batch} x {p.grad_accum}':<11}{'on' if p.activation_checkpointing else 'off':<5}"
              f"{p.precision:<10}{p.optimizer:<19}{p.max_length:>7}"
              f"{p.estimate.total / GiB:>9.1f}{p.estimate.budget / GiB:>8.1f}{ms:>6.0f}")
        if reasons:
            print(f"    strategy: {p.reasons['strategy']}")
            for key in extra + (("learning_rate",) if extra and p.optimizer == "adalomo" else ()):
                if key in p.reasons:
                    print(f"    {key}: {p.reasons[key]}")


if __name__ == "__main__":
    main()
