"""The reference setup of preference tuning, side by side: Llama-3.1-8B on one 24 GB GPU (an RTX
4090), SFT against DPO, KTO, ORPO and GRPO, each at the same micro-batch and sequence length, with
the memory estimate's parts and what the planner chooses for the same data.

Every figure is the planner's own (llmwizard.autotune.plan.planner, llmwizard.autotune.memory),
asked two ways: at one fixed setup (micro-batch 1, 2048 tokens, LoRA rank 16, checkpointing, so
the tasks differ only in their own terms), and as the plan it makes for data whose pairs are up to
2048 tokens (what a user gets from `llmwizard plan --task dpo --model llama-3.1-8b --gpus 1xRTX4090`
on such data). Needs no GPU and no weights (the catalog's exact counts).

Run: python bench/task_reference_setup.py [--out bench/results/task_reference_setup.txt]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from llmwizard.autotune.data.dataset import DatasetProfile
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import Goals
from llmwizard.autotune.machine.hardware import from_spec
from llmwizard.autotune.memory import GiB, TrainSetup, estimate
from llmwizard.autotune.model.model_spec import load_model_spec
from llmwizard.autotune.plan.planner import plan

MODEL, GPUS, LENGTH = "llama-3.1-8b", "1xRTX4090", 2048
# Pairs of a 500-token prompt and answers up to 1500 tokens (p99 1900): the sequence a DPO forward sees.
PAIRS = DatasetProfile(source="/data/pairs.jsonl", format="preference", num_examples=20_000, measured=2000,
                       tokenizer="Llama 3.1", exact_tokens=True, mean_tokens=900, p50_tokens=800, p90_tokens=1500,
                       p95_tokens=1700, p99_tokens=1900, max_tokens=2000, total_tokens=18_000_000,
                       prompt_tokens_p99=500, prompt_tokens_max=520, chosen_tokens_p99=1400, chosen_tokens_max=1480,
                       rejected_tokens_p99=1400, rejected_tokens_max=1470, task="dpo")
PROMPTS = dataclasses.replace(PAIRS, format="prompt_only", mean_tokens=300, p50_tokens=280, p90_tokens=450,
                              p95_tokens=480, p99_tokens=500, max_tokens=520, total_tokens=6_000_000, task="grpo",
                              chosen_tokens_p99=0, chosen_tokens_max=0, rejected_tokens_p99=0, rejected_tokens_max=0)

FIXED = [
    ("SFT", dict()),
    ("DPO, reference: disabled adapter", dict(task="dpo", reference="adapter")),
    ("DPO, reference: precomputed", dict(task="dpo", reference="precompute")),
    ("KTO, reference: disabled adapter", dict(task="kto", reference="adapter", micro_batch=2)),
    ("ORPO (no reference)", dict(task="orpo", reference="none")),
    ("GRPO, 8 x 1024-token completions", dict(task="grpo", reference="none", num_generations=8, prompt_len=512,
                                              completion_len=1024, seq_len=1536, micro_batch=8)),
]
PLANS = [("SFT", PAIRS, dict()), ("DPO", PAIRS, dict(task="dpo")), ("KTO", PAIRS, dict(task="kto")),
         ("ORPO", PAIRS, dict(task="orpo")), ("DPO, full fine-tuning", PAIRS, dict(task="dpo", method="full")),
         ("GRPO", PROMPTS, dict(task="grpo"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    model, hardware = load_model_spec(MODEL), from_spec(GPUS)
    budget = hardware.smallest_gpu.free_memory
    lines = [f"{model.name} on {hardware.describe()}: {budget / GiB:.1f} GiB free, "
             f"{budget * 0.95 / GiB:.1f} GiB usable (5% headroom)", "",
             f"1. One setup: LoRA rank 16 on every linear, micro-batch 1 (KTO 2, GRPO 8 completions), {LENGTH} tokens "
             "(GRPO 512 + 1024), checkpointing, bf16", "",
             f"{'task':40} {'total GiB':>9} {'vs SFT':>7}  largest parts (GiB)"]
    base = TrainSetup(method="lora", lora_r=16, micro_batch=1, seq_len=LENGTH, checkpointing=True, precision="bf16")
    sft_total = None
    for label, changes in FIXED:
        est = estimate(model, dataclasses.replace(base, **changes), budget)
        sft_total = sft_total or est.total
        # (the precompute pass runs before training: its peak is a phase of its own, not a part of the step)
        parts = {"weights": est.params, "activations": est.activations, "logits": est.logits,
                 **{name: value for name, value in est.components.items() if name != "reference precompute pass"}}
        top = ", ".join(f"{name} {value / GiB:.1f}" for name, value in
                        sorted(parts.items(), key=lambda kv: -kv[1])[:4] if value >= 0.05 * GiB)
        before = est.components.get("reference precompute pass")
        lines.append(f"{label:40} {est.total / GiB:9.1f} {est.total / sft_total:6.2f}x  {top}"
                     + (f"; before training, the precompute pass peaks at {before / GiB:.1f}" if before else ""))
    lines += ["", "2. The plan for 20,000 pairs up to 2,000 tokens (GRPO: prompts up to 520 tokens)", "",
              f"{'task':24} {'method':7} {'reference':11} {'micro':>5} {'accum':>5} {'ckpt':>4} {'length':>6} "
              f"{'GiB':>5}  learning rate"]
    for label, data, goals in PLANS:
        try:
            p = plan(hardware, model, data, Goals().merged(**goals))
        except UserError as error:
            lines.append(f"{label:24} does not fit: {error.message.split(': ', 1)[-1][:90]}")
            lines.append(f"{'':24} fix: {str(error.fix)[:160]}")
            continue
        ref = p.task_settings.reference if p.task_settings else "-"
        lines.append(f"{label:24} {p.method:7} {ref:11} {p.micro_batch:5} {p.grad_accum:5} "
                     f"{'on' if p.activation_checkpointing else 'off':>4} {p.max_length:6} "
                     f"{p.estimate.total / GiB:5.1f}  {p.learning_rate:g}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
