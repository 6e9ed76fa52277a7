"""Regenerate docs/examples/: the five reference setups, planned and exported by llmwizard.

    python docs/examples/generate.py            # rewrite docs/examples/<setup>/ in place
    python docs/examples/generate.py --out DIR  # write them elsewhere (the test compares the two)

Each setup is a real `llmwizard plan` and `llmwizard export` command, given only a catalog model
name and a hardware spec (`--gpus`), so nothing is downloaded and no GPU is needed. For every
command the script writes `plan.txt` (the plan as `llmwizard plan` prints it), the exported run
files, and one README.md per setup with the commands, what llmwizard chose, and a note wherever
that differs from how the setup is usually run, with the reason. The notes are written from the
plan itself, so they stay true when the planner changes; the output is deterministic (no
timestamps, no machine paths), so a test regenerates it and fails on any difference.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
REL = "docs/examples"          # how paths read in the READMEs: from the repository root
WIDTH = "100"                  # the width plan.txt is rendered at


@dataclass(frozen=True)
class Variant:
    key: str                   # the folder under the setup's folder
    title: str
    args: tuple[str, ...]      # what follows `llmwizard plan` / `llmwizard export`


@dataclass(frozen=True)
class Setup:
    slug: str
    title: str
    original: str              # the setup as it is usually run, in a few lines
    variants: tuple[Variant, ...]
    notes: Callable[[dict], list[str]]   # plans by variant key -> notes on the differences
    inputs: tuple[str, ...] = ()         # hand-written files in the setup's folder (kept as they are)
    headline: Callable[[dict], str] | None = None   # the index's one line (default: the first note's bold part)
    extra: str = ""                      # more Markdown after the notes


# ----------------------------------------------------------------------------- notes

def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _strategy(plan) -> str:
    names = {"single": "one process", "ddp": "DDP", "fsdp": "FSDP2", "zero2": "DeepSpeed ZeRO-2",
             "zero3": "DeepSpeed ZeRO-3"}
    name = names[plan.strategy] + (" hybrid shard (HSDP)" if plan.hybrid_shard else "")
    return name + (f" + {plan.offload} offload to CPU" if plan.offload != "none" else "")


def _batch(plan) -> str:
    return (f"micro-batch {plan.micro_batch} x {plan.num_processes} process(es) x {plan.grad_accum} "
            f"accumulation = {plan.effective_batch}")


def notes_gemma_4090(plans: dict) -> list[str]:
    plan = plans["run"]
    notes = []
    if plan.strategy == "fsdp":
        notes.append("Same strategy as the original: FSDP full shard, wrapping `GemmaDecoderLayer`.")
    else:
        notes.append(f"**{_strategy(plan)} rather than FSDP.** The 2.5B weights fit replicated: the plan needs "
                     f"{_gib(plan.estimate.total)} of {_gib(plan.estimate.budget)} per GPU. Sharding them would add "
                     "an all-gather of every layer in forward and backward over PCIe (the 4090 has no NVLink), "
                     "which the cost model prices several times slower (the `strategy` reason in plan.txt lists "
                     "the alternatives that fit and how much slower each is). Force the original with "
                     "`--strategy fsdp`: then the FSDP wrap class is `GemmaDecoderLayer`, as in the original.")
    if plan.activation_checkpointing:
        notes.append("Activation checkpointing is on because the activations do not fit otherwise.")
    else:
        notes.append("**No activation checkpointing.** The original turns on FSDP activation checkpointing; here "
                     "the activations fit without it, so recomputing them would only cost time (about a third "
                     "more compute per step). Under `--strategy fsdp` llmwizard uses FSDP's own checkpointing, "
                     "not the model's gradient checkpointing, when it is needed.")
    if plan.micro_batch != 1:
        notes.append(f"**{_batch(plan)}.** The original's micro-batch 1 x 8 accumulation is kept as an effective "
                     "batch of 32; the planner raises the micro-batch as far as memory allows, which keeps the "
                     "same optimisation with fewer, fuller steps.")
    notes.append(f"LoRA r={plan.lora.r}, alpha={plan.lora.alpha}, dropout={plan.lora.dropout:g} on "
                 f"{', '.join(plan.lora.target_modules)}; {plan.precision}; as the original.")
    notes.append("The original's known failure, more processes than GPUs (\"Duplicate GPU detected\"), cannot "
                 "happen: llmwizard starts one process per GPU it planned for, and refuses `--processes` above the "
                 "GPU count.")
    return notes


def notes_gemma3_long(plans: dict) -> list[str]:
    short, lora, full = plans["8xh100"], plans["120k-lora"], plans["120k-full"]
    notes = [f"**Default length on 8x H100: {_strategy(short)}.** "
             + ("As the original's default (ZeRO-2)." if short.strategy == "zero2" else
                f"Not ZeRO-2: with LoRA the 4B weights fit replicated ({_gib(short.estimate.total)} of "
                f"{_gib(short.estimate.budget)} per GPU) and the optimizer states are tiny, so there is nothing "
                "worth sharding; the cost model prices it the fastest.")]
    notes.append(f"**120K tokens with LoRA on one H100: {_strategy(lora)}, activation checkpointing "
                 f"{'on' if lora.activation_checkpointing else 'off'}, {_gib(lora.estimate.total)} of "
                 f"{_gib(lora.estimate.budget)}.** "
                 + ("No ZeRO-3 and no CPU offload: with LoRA only the adapters have gradients and optimizer "
                    "states; what 120K tokens really need is activation memory, and checkpointing each layer cuts "
                    "that to one layer's worth plus a hidden-state per layer." if lora.offload == "none" else
                    "Offload is what makes it fit; plan.txt lists the host RAM it needs."))
    if full.precision == "pure_bf16":
        notes.append(f"**120K tokens, full fine-tuning on one H100: {_strategy(full)}, pure bf16 with "
                     f"{full.optimizer}, {_gib(full.estimate.total)} of {_gib(full.estimate.budget)}, no offload.** "
                     "Not the original's ZeRO-3 with CPU offload: with fp32 master weights, gradients and AdamW "
                     "states (16 bytes a parameter, 64 GiB for 4.3B weights before any activation) it needs offload, and "
                     "every step then crosses PCIe. Keeping weights, gradients and states in bf16, with torchao's low-bit AdamW "
                     "(which rounds updates stochastically, so small ones are not lost) fits on the GPU and the "
                     "cost model prices it faster (plan.txt's `precision` reason states the trade-off). "
                     "`--precision bf16 --optimizer adamw` gives the classic layout, which the planner then fits "
                     "with offload, sized from the host RAM.")
    else:
        notes.append(f"**120K tokens, full fine-tuning on one H100: {_strategy(full)}, needing "
                     f"{_gib(full.estimate.host_ram)} of host RAM.** Every weight then has fp32 master weights, "
                     "gradients and AdamW states (16 bytes a parameter); offloading them to the CPU is what fits "
                     "it. The original's rule of thumb (ZeRO-3 offload wants 64 GB or more of host RAM) is computed "
                     "here from the model instead, and a machine with too little is refused with the figure.")
    notes.append(f"The dataset-size presets: without `--preset` the planner applies the same rules from the data "
                 f"itself (for the bundled sample: {short.reasons.get('dataset', 'see plan.txt')}); "
                 "`--preset small-dataset` / `large-dataset` fix the class.")
    notes.append("`PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` is set for every GPU run (sft_config.yaml's "
                 "`env`), against fragmentation at long lengths, as in the original.")
    notes.append("wandb: off by default (`report_to: none`); `bash launch.sh --report_to wandb` turns it on "
                 "(launch.sh passes any SFTConfig key through).")
    return notes


def notes_qwen_vl(plans: dict) -> list[str]:
    plan = plans["images"]
    notes = ["**Images.** Planned on the bundled `embedded:shapes` set (one image per example) so the plan "
             "has image figures: the `vision` and `max length` reasons give the images, image tokens per "
             "example and tower patches, and the memory holds the vision tower's activations. Give your own "
             "data with `--dataset` (messages with image parts and an `images` column; docs/vision.md); "
             "larger images mean more image tokens, which the plan counts in the length.",
             f"Strategy: **{_strategy(plan)}**"
             + (" as the original." if plan.strategy == "fsdp" else
                f" rather than FSDP: {_gib(plan.estimate.total)} of {_gib(plan.estimate.budget)} per GPU, and the "
                "cost model prices it faster than FSDP2 here (the `strategy` reason lists FSDP's figure). Add "
                "`--strategy fsdp` for the original's route."),
             f"From the setup file {REL}/3-qwen2.5-vl/hf-trainer.yaml (a preset given by path): Adafactor, "
             "constant learning rate, evaluation and a checkpoint every N steps, the best model by eval_loss "
             "loaded at the end; results are saved as safetensors (the Trainer's default), and `ddp_find_unused_parameters: false` is always written.",
             "Gradient checkpointing, when the plan turns it on, is the non-reentrant kind "
             "(`activation_checkpointing_kwargs: {use_reentrant: false}`), as in the original; "
             + ("here it is on." if plan.activation_checkpointing else
                "here the activations fit without it, so it is off.")]
    return notes


def notes_full_torchrun(plans: dict) -> list[str]:
    plan = plans["run"]
    return [f"**FSDP asked for** (`--strategy fsdp`). Left to itself the planner picks {plans['auto'].strategy} "
            f"for this model and hardware (`auto/plan.txt`: its `strategy` reason gives the margin); the "
            "difference is small on NVLink, and the original's route is kept.",
            "launch.sh exports the FSDP settings the way `accelerate launch` does, for a plain "
            "`torchrun --nproc_per_node=N` (`ACCELERATE_USE_FSDP=true`, `FSDP_CPU_RAM_EFFICIENT_LOADING=true`, "
            "the wrap class, sharded state dicts). The switches are written `true`, not `1`: current accelerate "
            "compares them with the string \"true\", so `ACCELERATE_USE_FSDP=1` silently leaves FSDP off.",
            "The TrlParser YAML is sft_config.yaml. Resume from the last complete checkpoint with "
            "`bash launch.sh --resume` (or `llmwizard resume DIR`).",
            f"The test suite runs this route for real on the CPU: the same export with the embedded tiny model "
            f"({plan.processes_per_machine} ranks in the plan here, 2 gloo ranks in the test), and resuming a "
            "sharded checkpoint under torchrun is tested too."]


def notes_llama_multinode(plans: dict) -> list[str]:
    plan = plans["run"]
    hsdp = plan.strategy == "fsdp" and plan.hybrid_shard
    return [(f"**{_strategy(plan)} rather than FULL_SHARD across both machines.** " if hsdp else
             f"**{_strategy(plan)}.** ")
            + (f"The model states fit when sharded over one machine's 8 GPUs ({_gib(plan.estimate.total)} of "
               f"{_gib(plan.estimate.budget)} per GPU), so weights are gathered over NVLink inside each machine "
               "and only gradients cross the slower inter-node network, once per step." if hsdp else
               "See plan.txt for the reason."),
            f"Transformer auto wrap of `{plan.layer_cls}`, {plan.precision} mixed precision, sharded checkpoints "
            "(`SHARDED_STATE_DICT`: each rank writes its shard, and resume reads them back), and a full state "
            "dict gathered for the final save so the result loads anywhere; the Trainer's distributed sampler "
            "gives each rank its share of the data.",
            "torchrun with c10d rendezvous on machine 0's address: run launch.sh once per machine with "
            "`MACHINE_RANK` and `MAIN_PROCESS_IP`, or `sbatch slurm.sbatch`. The test suite runs this export over "
            "loopback (two \"machines\" on one host, tiny model, CPU)."]


SETUPS = (
    Setup("1-gemma-2b-4x4090", "Gemma 2B (instruction-tuned), LoRA on 4x RTX 4090",
          "accelerate + FSDP full shard with transformer wrap of `GemmaDecoderLayer`, FSDP activation "
          "checkpointing, LoRA r=8 / alpha 16 / dropout 0.05 on q,k,v,o,gate,up,down, bf16, micro-batch 1 with "
          "8 accumulation steps.",
          (Variant("run", "4x RTX 4090", ("--model", "gemma-2b", "--gpus", "4xRTX4090", "--lora-r", "8",
                                          "--effective-batch", "32")),),
          notes_gemma_4090),
    Setup("2-gemma-3-4b-long-context", "Gemma 3 4B with TRL SFT, up to 120K tokens on 80 GB GPUs",
          "TRL SFT with DeepSpeed ZeRO-2 by default, ZeRO-3 with CPU offload for 120K-token contexts on 80 GB "
          "GPUs, the dataset-size presets, `PYTORCH_CUDA_ALLOC_CONF` against fragmentation, wandb optional.",
          (Variant("8xh100", "8x H100 80GB, the data's own length", ("--model", "gemma-3-4b", "--gpus", "8xH100-80GB")),
           Variant("120k-lora", "one H100 80GB, 120K tokens, LoRA",
                   ("--model", "gemma-3-4b", "--gpus", "1xH100-80GB", "--preset", "long-context",
                    "--max-length", "122880")),
           Variant("120k-full", "one H100 80GB, 120K tokens, full fine-tuning",
                   ("--model", "gemma-3-4b", "--gpus", "1xH100-80GB", "--preset", "long-context",
                    "--max-length", "122880", "--method", "full"))),
          notes_gemma3_long,
          headline=lambda plans: (f"120K tokens: {_strategy(plans['120k-lora'])} with checkpointing "
                                  f"{'on' if plans['120k-lora'].activation_checkpointing else 'off'} for LoRA; "
                                  f"{_strategy(plans['120k-full'])} for full fine-tuning")),
    Setup("3-qwen2.5-vl", "Qwen2.5-VL 7B with the HF Trainer, images and text",
          "HF Trainer with FSDP, Adafactor, constant learning rate, bf16, evaluation and saving every N steps, "
          "the best model by eval_loss loaded at the end, safetensors, `ddp_find_unused_parameters=False`, "
          "non-reentrant gradient checkpointing.",
          (Variant("images", "8x A100 80GB, full fine-tuning, image rows",
                   ("--model", "qwen2.5-vl-7b", "--gpus", "8xA100-80GB", "--dataset", "embedded:shapes",
                    "--preset", f"{REL}/3-qwen2.5-vl/hf-trainer.yaml")),),
          notes_qwen_vl, inputs=("hf-trainer.yaml",),
          headline=lambda plans: (f"{_strategy(plans['images'])} rather than FSDP (priced faster; `--strategy fsdp` "
                                  "gives the original's)" if plans["images"].strategy != "fsdp" else
                                  "as the original: FSDP over the vision blocks and decoder layers")),
    Setup("4-full-finetune-torchrun", "Full fine-tuning from a TrlParser YAML under torchrun",
          "Full fine-tuning with TRL's TrlParser YAML under `torchrun --nproc_per_node=N`, FSDP switched on "
          "through accelerate's environment (`ACCELERATE_USE_FSDP`, `FSDP_CPU_RAM_EFFICIENT_LOADING`), resumed "
          "from the last checkpoint.",
          (Variant("run", "8x H100 80GB, torchrun + FSDP", ("--model", "llama-3.1-8b", "--gpus", "8xH100-80GB",
                                                           "--preset", "full-finetune", "--launcher", "torchrun",
                                                           "--strategy", "fsdp")),
           Variant("auto", "the same, strategy left to the planner",
                   ("--model", "llama-3.1-8b", "--gpus", "8xH100-80GB", "--preset", "full-finetune",
                    "--launcher", "torchrun"))),
          notes_full_torchrun,
          headline=lambda plans: ("the original's route (FSDP asked for; the planner alone picks "
                                  f"{_strategy(plans['auto'])}); FSDP switches written `true`, not `1`")),
    Setup("5-llama-3-8b-fsdp-multinode", "Llama 3 8B, FSDP under torchrun on two machines",
          "PyTorch FSDP under torchrun with c10d rendezvous, transformer auto wrap of `LlamaDecoderLayer`, "
          "FULL_SHARD, bf16 mixed precision, a DistributedSampler, sharded save and load.",
          (Variant("run", "2 machines x 8x H100 80GB", ("--model", "llama-3.1-8b", "--gpus", "8xH100-80GB",
                                                        "--nodes", "2", "--preset", "multi-node",
                                                        "--method", "full")),),
          notes_llama_multinode),
)


# ----------------------------------------------------------------------------- running llmwizard

def _llmwizard(argv: list[str]) -> str:
    """Run the llmwizard command in this process; its stdout (it must succeed)."""
    from llmwizard.wizard.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = signal.getsignal(signal.SIGTERM)  # main() installs its own; keep the caller's
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        signal.signal(signal.SIGTERM, handler)
    if code != 0:
        raise SystemExit(f"llmwizard {shlex.join(argv)} exited {code}:\n{err.getvalue()}{out.getvalue()}")
    return out.getvalue()


def _normalise_run(directory: Path) -> None:
    """Drop what differs between machines and moments: the export record (a timestamp) and the
    interpreter path launch.sh falls back to."""
    shutil.rmtree(directory / ".llmwizard", ignore_errors=True)
    launch = directory / "launch.sh"
    text = launch.read_text(encoding="utf-8")
    launch.write_text(text.replace(shlex.quote(sys.executable), "python3"), encoding="utf-8")


def _command(verb: str, variant: Variant, slug: str) -> str:
    words = ["llmwizard", verb, *variant.args]
    if verb == "export":
        words += ["--out", f"{REL}/{slug}/{variant.key}"]
    return shlex.join(words)


def generate(out: Path) -> list[Path]:
    """Write every setup under `out` (docs/examples by default); return the setup folders."""
    from llmwizard.autotune.plan import Plan

    import tempfile

    saved = {key: os.environ.get(key) for key in ("COLUMNS", "FORCE_COLOR", "NO_COLOR", "LLMWIZARD_CONFIG_DIR")}
    # Only the bundled presets: a user preset of the same name must not change the examples.
    config_dir = tempfile.mkdtemp(prefix="llmwizard-examples-")
    os.environ["LLMWIZARD_CONFIG_DIR"] = config_dir
    os.environ["COLUMNS"] = WIDTH
    os.environ.pop("FORCE_COLOR", None)
    os.environ["NO_COLOR"] = "1"
    cwd = Path.cwd()
    os.chdir(ROOT)   # the setup files are given by paths from the repository root
    folders = []
    index: list[tuple[Setup, dict]] = []
    try:
        for setup in SETUPS:
            folder = out / setup.slug
            if folder.exists():
                for child in folder.iterdir():
                    if child.name not in setup.inputs and child.name != "README.md":
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
            folder.mkdir(parents=True, exist_ok=True)
            for name in setup.inputs:
                source = HERE / setup.slug / name
                if source.resolve() != (folder / name).resolve():
                    shutil.copy(source, folder / name)
            plans = {}
            for variant in setup.variants:
                run = folder / variant.key
                text = _llmwizard(["plan", *variant.args])
                _llmwizard(["export", *variant.args, "--out", str(run)])
                _normalise_run(run)
                (run / "plan.txt").write_text(text, encoding="utf-8")
                plans[variant.key] = Plan.load(run / "plan.yaml")
            (folder / "README.md").write_text(_readme(setup, plans), encoding="utf-8")
            folders.append(folder)
            index.append((setup, plans))
        (out / "README.md").write_text(_index(index), encoding="utf-8")
    finally:
        os.chdir(cwd)
        shutil.rmtree(config_dir, ignore_errors=True)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return folders


def _readme(setup: Setup, plans: dict) -> str:
    lines = [f"# {setup.title}", "", "_Generated by `python docs/examples/generate.py`; do not edit by hand._", "",
             f"**The setup as usually run:** {setup.original}", "", "## Commands", ""]
    for variant in setup.variants:
        lines += [f"{variant.title}:", "", "```bash", _command("plan", variant, setup.slug),
                  _command("export", variant, setup.slug), "```", ""]
    lines += ["## What llmwizard chose", "", "| | strategy | method | batch | checkpointing | launcher | per GPU |",
              "|---|---|---|---|---|---|---|"]
    for variant in setup.variants:
        plan = plans[variant.key]
        lines.append(f"| [{variant.key}]({variant.key}/plan.txt) | {_strategy(plan)} | {plan.method} | "
                     f"{_batch(plan)} | {'on' if plan.activation_checkpointing else 'off'} | {plan.launcher} | "
                     f"{_gib(plan.estimate.total)} of {_gib(plan.estimate.budget)} |")
    lines += ["", "Each folder holds `plan.txt` (every choice with its reason, as `llmwizard plan` prints it) and the "
              "exported run files: plan.yaml, accelerate_config.yaml, sft_config.yaml (TRL), ds_config.json "
              "(DeepSpeed), launch.sh, slurm.sbatch (several machines). The model is a catalog name and the data "
              "the bundled sample; give your own with `--model` and `--dataset`.", "",
              "## Where it differs from the original, and why", ""]
    lines += [f"- {note}" for note in setup.notes(plans)]
    if setup.extra:
        lines += ["", setup.extra]
    return "\n".join(lines) + "\n"


def _index(index: list[tuple[Setup, dict]]) -> str:
    """docs/examples/README.md: one row per setup, with what llmwizard chose and the headline difference."""
    lines = ["# The reference setups, as llmwizard plans them", "",
             "_Generated by `python docs/examples/generate.py`; do not edit by hand. What these are: "
             "[docs/reference-setups.md](../reference-setups.md)._", "",
             "| setup | planned for | llmwizard's choice | the main difference from the original |", "|---|---|---|---|"]
    for setup, plans in index:
        first = setup.notes(plans)[0]
        headline = (setup.headline(plans) if setup.headline else
                    first.split("**")[1].rstrip(".") if first.startswith("**") else first.split(". ")[0])
        for i, variant in enumerate(setup.variants):
            plan = plans[variant.key]
            name = f"[{setup.title}]({setup.slug}/README.md)" if i == 0 else ""
            lines.append(f"| {name} | [{variant.title}]({setup.slug}/{variant.key}/plan.txt) | {_strategy(plan)}, "
                         f"{plan.method}, checkpointing {'on' if plan.activation_checkpointing else 'off'}, "
                         f"{_gib(plan.estimate.total)} of {_gib(plan.estimate.budget)} per GPU | "
                         f"{headline if i == 0 else ''} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the setups (default: docs/examples)")
    args = parser.parse_args()
    for folder in generate(args.out.resolve()):
        print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
