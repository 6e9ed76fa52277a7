"""The GPU check: the probe on real-size models, one GPU, estimate against measurement.

Why: the memory model and the cost model are checked on the CPU (FakeTensor peaks, RSS); what a
GPU adds (the caching allocator's reserve, CUDA's own buffers, kernels' workspaces, the real step
time) is only seen on one. This script is ready for the day a GPU is lent: one command, under 8
minutes on one H100 or H200, writing `bench/results/gpu_check-<gpu>.txt` and feeding the
calibration store (llmwizard.autotune.machine.calibration) as every probe does.

What it runs: for each case of the matrix, a model built from a catalog config (real widths, the
layer count cut where the whole model would take minutes to initialise) with random weights (an
empty model.safetensors: transformers initialises every weight it misses, so nothing is
downloaded or written beyond the config), the embedded tokenizer, the bundled dataset padded to
the case's length; the planner plans it with the case's settings pinned (one GPU, no DDP), the
exporter writes the run directory, and the probe (llmwizard.runner.session.probe.run_probe: launch.sh,
the training entry, PROBE_STEPS real optimizer steps on the longest rows) measures it. One line per
case: the estimate (expected and tensor peak), the measured allocated and reserved peaks and the
process's NVML figure, measured / expected, and the seconds per step. Cases: dense and MoE; full,
LoRA and QLoRA; short and long sequences; each memory saver that runs on one GPU (pure bf16 with
torchao's 8- and 4-bit AdamW, Adafactor, bitsandbytes' 8-bit AdamW, AdaLomo, GaLore, APOLLO,
activation offloading). A case that fails is a line saying why; the rest go on. No new case starts
after --budget-s seconds, so the whole check ends in time.

`--dry-run` runs the same code on the CPU with a tiny matrix (catalog configs shrunk to a few
dozen units wide) so that the tests (tests/test_gpu_check.py) keep it working.

Preparing the GPU machine (it has torch 2.11 with CUDA 13, transformers 5.17, accelerate 1.15,
peft, nvidia-ml-py, tensorboard, pyarrow, pandas, but not TRL, datasets, DeepSpeed, bitsandbytes,
torchao or pydantic). Here, in the repository root (`/.whl/` is in .gitignore), fetch the wheels
it lacks, about 60 MiB with the checkout under the 64 MiB a device call carries:

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 -d .whl \\
        trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \\
        bitsandbytes==0.50.2 torchao==0.18.0 lomo-optim==0.1.1 galore-torch==1.0 apollo-torch==1.0.3 \\
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \\
        platformdirs==4.14.9

bitsandbytes alone is 43 MB of it. DeepSpeed publishes no wheel (a source archive only) and no
case here needs it: every case is one process without ZeRO. The machine's transformers 5.17 and
accelerate 1.15 are used as they are (llmwizard is tested on transformers 5.25): carrying
transformers 5.25 would mean huggingface-hub 2.4, httpx2, httpcore2, truststore, kernels and
tomlkit too, about 18 MB more than the call carries beside bitsandbytes. If a case fails on a
missing transformers internal (runner/rank/patches.py names it), carry that set instead of
bitsandbytes, galore-torch and apollo-torch and run the other cases with `--only`. Then, on the
device (`run` with carry [".whl"]), one command:

    bash bench/gpu_check.sh

which installs them with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`, puts
the checkout on the path as the installed `llmwizard` namespace, runs this script and copies the
results file and the probe records into $OUT.

    python bench/gpu_check.py [--dry-run] [--out-dir bench/results] [--work DIR] [--budget-s 420]
                              [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GiB = 2**30
BUDGET_S = 420            # no new case starts later than this (the check must end within 8 minutes)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# What a dry run shrinks a catalog config to: the same architecture, a few dozen units wide.
DRY_WIDTHS = {"hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 2048, "num_experts": 4,
              "num_local_experts": 4, "num_experts_per_tok": 2}


@dataclass(frozen=True)
class Case:
    """One probe: a catalog model (its layers cut to `layers`), the method and the pinned settings."""

    model: str
    method: str
    seq: int
    micro_batch: int
    layers: int
    goals: dict[str, Any] = field(default_factory=dict)   # optimizer, precision, checkpointing, ...

    @property
    def name(self) -> str:
        extra = [f"{k}={v}" for k, v in sorted(self.goals.items())]
        return " ".join([f"{self.model} L{self.layers}", self.method, f"s{self.seq}", f"b{self.micro_batch}", *extra])


def gpu_matrix() -> list[Case]:
    """The matrix for one 80 GB GPU, most telling first (a late case is the one the budget drops)."""
    ckpt = {"checkpointing": True}
    pure = {"precision": "pure_bf16"}
    return [
        Case("llama-3.2-1b", "full", 2048, 4, 16),                                   # fused AdamW, the default
        Case("llama-3.1-8b", "lora", 4096, 4, 8),
        Case("llama-3.1-8b", "qlora", 4096, 4, 8),
        Case("qwen3-30b-a3b", "lora", 4096, 2, 6),                                   # MoE
        Case("qwen3-30b-a3b", "full", 2048, 1, 2, ckpt),
        Case("llama-3.2-1b", "full", 32768, 1, 16, ckpt),                             # long
        Case("llama-3.1-8b", "lora", 65536, 1, 8, ckpt),
        Case("llama-3.2-1b", "full", 4096, 2, 16, {**pure, "optimizer": "torchao_adamw_8bit"}),
        Case("llama-3.2-1b", "full", 4096, 2, 16, {**pure, "optimizer": "torchao_adamw_4bit"}),
        Case("llama-3.2-1b", "full", 4096, 2, 16, {"optimizer": "adamw_8bit"}),
        Case("llama-3.2-1b", "full", 4096, 2, 16, {"optimizer": "adafactor"}),
        Case("llama-3.2-1b", "full", 4096, 2, 16, {**pure, "optimizer": "adalomo"}),
        Case("llama-3.2-1b", "full", 4096, 2, 16, {"optimizer": "galore_adamw"}),
        Case("llama-3.2-1b", "full", 4096, 2, 16, {"optimizer": "apollo_adamw"}),
        Case("llama-3.2-1b", "full", 16384, 1, 16, {**ckpt, "activation_offloading": True}),
    ]


def dry_matrix() -> list[Case]:
    """The CPU's: the same code path on tiny widths (tests/test_gpu_check.py runs it)."""
    return [Case("llama-3.2-1b", "full", 128, 2, 2)]


def model_dir(case: Case, work: Path, dry_run: bool) -> Path:
    """A loadable model directory for `case`: the catalog config (layers cut; shrunk on a dry run),
    an empty model.safetensors (so every weight is initialised at random when loaded) and the
    embedded model's tokenizer (its ids are within every catalog vocabulary)."""
    from llmwizard.autotune.embedded import ensure_embedded_model
    from llmwizard.autotune.model.model_spec import CATALOG_PATH

    entry = next(m for m in json.loads(CATALOG_PATH.read_text())["models"] if m["name"] == case.model)
    config = dict(entry["config"], num_hidden_layers=case.layers)
    config.pop("quantization_config", None)      # weights are made here, in the plan's dtype
    if dry_run:
        config.update({key: value for key, value in DRY_WIDTHS.items() if key in config or key == "head_dim"})
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", case.name)
    directory = work / "models" / slug
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _empty_safetensors(directory / "model.safetensors")
    tokenizer = ensure_embedded_model()
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copyfile(tokenizer / name, directory / name)
    return directory


def _empty_safetensors(path: Path) -> None:
    """A safetensors file with no tensors (8-byte header length, then the JSON header)."""
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header)


def plan_case(case: Case, directory: Path, hardware: Any = None) -> tuple[Any, Any]:
    """(the plan, the model spec): the planner's own route, with the case's settings pinned, for
    `hardware` (default: this machine, detected)."""
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.machine.hardware import detect
    from llmwizard.autotune.plan.inputs import plan_for, profile_for
    from llmwizard.autotune.model.model_spec import load_model_spec

    model = load_model_spec(str(directory))
    pinned = {"method": case.method, "strategy": "single", "processes": 1, "max_length": case.seq,
              "micro_batch": case.micro_batch, "effective_batch": case.micro_batch, **case.goals}
    goals = Goals(allow_truncation=True, eval_fraction=0.0, probe=True).merged(**pinned)
    return plan_for(hardware or detect(), model, profile_for(model, None), goals), model


@dataclass
class Row:
    """One line of the results file."""

    case: str
    expected: int = 0          # the estimate's expected peak (nvidia-smi; RSS on the CPU)
    tensor: int = 0            # the estimate's tensor peak (max_memory_allocated)
    allocated: int = 0         # measured: torch.cuda.max_memory_allocated
    reserved: int = 0          # measured: torch.cuda.max_memory_reserved
    process: int = 0           # measured: NVML's figure for the process (peak RSS on the CPU)
    step_s: float | None = None
    verdict: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        if not self.expected:
            return f"{self.case:<64} {self.verdict}"
        seen = self.process or self.reserved or self.allocated
        ratio = f"{seen / self.expected:6.3f}" if seen else "     -"
        step = f"{self.step_s:7.2f}" if self.step_s else "      -"
        return (f"{self.case:<64} {self.expected / GiB:8.2f} {self.tensor / GiB:8.2f} {self.allocated / GiB:8.2f} "
                f"{self.reserved / GiB:8.2f} {self.process / GiB:8.2f} {ratio} {step} {self.seconds:6.0f}  "
                f"{self.verdict}")


HEADER = (f"{'case':<64} {'exp GiB':>8} {'tens GiB':>8} {'alloc':>8} {'reserved':>8} {'process':>8} "
          f"{'ratio':>6} {'step s':>7} {'secs':>6}  verdict")


def run_case(case: Case, work: Path, dry_run: bool) -> Row:
    """Plan, export and probe one case (one round, the plan as planned); its row."""
    from llmwizard.autotune.errors import UserError
    from llmwizard.runner.export import export
    from llmwizard.runner.session.probe import PROBE_FILE, run_probe

    start = time.monotonic()
    row = Row(case.name)
    try:
        directory = model_dir(case, work, dry_run)
        plan, model = plan_case(case, directory)
    except UserError as exc:
        row.verdict = f"not planned: {exc.message}"
        return row
    run_dir = work / "runs" / directory.name
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        export(plan, run_dir)
    except UserError as exc:
        row.verdict = f"not exported: {exc.message}"
        return row
    row.expected, row.tensor = plan.estimate.total, plan.estimate.tensor_peak
    result = run_probe(plan, run_dir, lambda event: None, model=model, may_grow=False, rounds=1, calibrate=True)
    row.seconds = time.monotonic() - start
    lines = [json.loads(text) for text in (run_dir / PROBE_FILE).read_text().splitlines() if text.strip()] \
        if (run_dir / PROBE_FILE).is_file() else []
    if not lines:
        row.verdict = "no probe record" + (" (stopped)" if result.stopped else "")
        return row
    last = lines[-1]
    ranks = [r for r in last.get("ranks", []) if not r.get("oom")]
    if ranks:
        row.allocated = max(int(r.get("peak_allocated", 0)) for r in ranks)
        row.reserved = max(int(r.get("peak_reserved", 0)) for r in ranks)
        row.process = max(int(r.get("process_bytes", 0)) for r in ranks)
    row.step_s = last.get("step_s")
    row.verdict = f"{last.get('verdict')}: {last.get('reason', '')}"[:200]
    return row


def gpu_slug() -> str:
    """The results file's name part: the GPU's name as torch reports it, or "cpu"."""
    from llmwizard.autotune.machine.hardware import detect

    gpu = detect().smallest_gpu
    return re.sub(r"[^a-z0-9]+", "-", gpu.name.lower()).strip("-") if gpu else "cpu"


def _seconds(text: str) -> float:
    """--budget-s: a finite number of seconds above 0 (argparse names the flag and the value)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} seconds: give a number above 0, such as {BUDGET_S}")
    return value


def _folder(text: str) -> Path:
    """--out-dir and --work: a folder, or a path where one can be made (not a file)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder: name a folder (it is made if missing)")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the tiny CPU matrix (what the tests run)")
    parser.add_argument("--out-dir", type=_folder, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=_folder, help="models and run directories (default: a temporary folder)")
    parser.add_argument("--budget-s", type=_seconds, default=BUDGET_S, help="no new case starts after this")
    parser.add_argument("--only", nargs="+", default=None, help="cases whose name contains one of these")
    args = parser.parse_args(argv)
    cases = dry_matrix() if args.dry_run else gpu_matrix()
    if args.only:
        cases = [c for c in cases if any(word in c.name for word in args.only)]
        if not cases:
            names = "; ".join(c.name for c in (dry_matrix() if args.dry_run else gpu_matrix()))
            parser.error(f"argument --only: {' '.join(args.only)} matches no case; the cases are: {names}")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    slug = gpu_slug() + ("-dry-run" if args.dry_run else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"gpu_check-{slug}.txt"
    import torch

    import transformers

    head = [f"# python bench/gpu_check.py{' --dry-run' if args.dry_run else ''} ({time.strftime('%Y-%m-%d %H:%M')})",
            f"# {slug}; torch {torch.__version__}, transformers {transformers.__version__}; one process, the "
            "probe's steps on the longest rows padded to the length",
            "# exp/tens: the estimate's expected (nvidia-smi) and tensor peak; alloc/reserved: torch's peaks; "
            "process: NVML (RSS on the CPU); ratio: measured / expected",
            HEADER]
    out.write_text("\n".join(head) + "\n")
    print("\n".join(head), flush=True)
    start = time.monotonic()
    for case in cases:
        if time.monotonic() - start > args.budget_s:
            row = Row(case.name, verdict=f"skipped: the {args.budget_s:.0f} s budget is spent")
        else:
            try:
                row = run_case(case, work, args.dry_run)
            except Exception as exc:  # noqa: BLE001 - one broken case is a line, not the end of the check
                row = Row(case.name, verdict=f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                          if str(exc) else f"error: {type(exc).__name__}")
        with out.open("a") as handle:
            handle.write(row.line() + "\n")
        print(row.line(), flush=True)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
