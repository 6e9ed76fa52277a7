"""The commands for after a run: report, merge and try.

- `llmwizard report RUN` writes report.html again from the run's files (llmwizard.runner.after.report),
  prints its path, and opens it in a browser when stdout is a terminal and a browser is there.
  Damaged files are named on the page and on stderr; where report.html cannot be written the
  command says so (exit code 2) and changes nothing.
- `llmwizard merge RUN [--out DIR] [--checkpoint NAME] [--dequantize]` merges the LoRA adapter
  into the base (llmwizard.runner.after.merge); it never writes over an existing directory.
- `llmwizard try RUN "prompt"` generates from the tuned model and from the base, side by side,
  through the model's chat template (llmwizard.runner.rank.samples.generate).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from llmwizard.autotune.errors import UserError


@contextlib.contextmanager
def library_chatter_held_back() -> Iterator[None]:
    """Loading a model imports transformers, PEFT and what they pull in (torchao, DeepSpeed), whose
    start-up warnings (a CUDA kernel that does not load on this machine, a deprecated torch call)
    and progress bars read like failure in a command's output. Held back while loading: warnings
    and log records below ERROR; errors still show, and this command's own output is untouched."""
    import logging
    import os
    import warnings

    held = logging.root.manager.disable
    logging.disable(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            yield
    finally:
        logging.disable(held)


def _run_dir(target: str) -> Path:
    run_dir = Path(target)
    if not run_dir.is_dir():
        raise UserError(f"Run directory not found: {run_dir}", title="Run directory",
                        fix="Pass a run directory (see `llmwizard runs`).")
    return run_dir


def cmd_report(args: argparse.Namespace) -> int:
    from llmwizard.runner import rundir
    from llmwizard.runner.after.report import write_report
    from llmwizard.runner.after.runs import run_problems

    run_dir = _run_dir(args.target)
    if not rundir.is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not a run directory (no plan.yaml).", title="Run directory",
                        fix="Pass a run directory (see `llmwizard runs`).")
    path = write_report(run_dir).resolve()
    print(path)
    for problem in run_problems(run_dir):  # named on the page too; stdout stays the path alone
        print(f"! {problem}", file=sys.stderr)
    if not args.no_open and sys.stdout.isatty():
        import webbrowser

        try:
            webbrowser.get()
        except webbrowser.Error:
            return 0  # no browser here (a server over SSH): the path is the answer
        webbrowser.open(path.as_uri())
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from llmwizard.runner.after.merge import check_merge_target, load_plan, merge

    run_dir = _run_dir(args.target)
    load_plan(run_dir)
    out = Path(args.out) if args.out else None
    if out is not None:
        check_merge_target(out)  # before minutes of loading
    console = Console(stderr=True)
    with console.status("Merging the adapter into the base model..."), library_chatter_held_back():
        written, weights = merge(run_dir, out, args.checkpoint, args.dequantize)
    for problem in weights.skipped:
        console.print(f"! passed over: {problem}", style="yellow", highlight=False, markup=False)
    Console().print(f"Merged {weights.label} into the base: {written}\n"
                    f"Load it with AutoModelForCausalLM.from_pretrained({str(written)!r}) "
                    f"and AutoTokenizer.from_pretrained({str(written)!r}).", highlight=False)
    return 0


def cmd_try(args: argparse.Namespace) -> int:
    from llmwizard.runner.after.merge import load_plan, load_tuned
    from llmwizard.runner.rank.samples import generate, printable

    run_dir = _run_dir(args.target)
    load_plan(run_dir)
    if not args.prompt.strip():
        raise UserError("The prompt is empty.", title="Prompt", fix='Pass a message: llmwizard try RUN "2+3="')
    console = Console(stderr=True)
    with console.status("Loading the tuned model and its base..."), library_chatter_held_back():
        tuned_model, base_model, tokenizer, weights = load_tuned(run_dir, args.checkpoint)
    for problem in weights.skipped:
        console.print(f"! passed over: {problem}", style="yellow", highlight=False, markup=False)
    with console.status("Generating..."), library_chatter_held_back():
        tuned = generate(tuned_model, tokenizer, [args.prompt], args.max_new_tokens)[0]
        if base_model is None:
            with tuned_model.disable_adapter():  # the same weights without the adapter: the base
                base = generate(tuned_model, tokenizer, [args.prompt], args.max_new_tokens)[0]
        else:
            base = generate(base_model, tokenizer, [args.prompt], args.max_new_tokens)[0]
    if args.json:
        print(json.dumps({"prompt": args.prompt, "tuned": tuned, "base": base, "weights": weights.label,
                          "chat_template": bool(getattr(tokenizer, "chat_template", None))}, indent=2))
        return 0
    from rich.columns import Columns
    from rich.panel import Panel
    from rich.text import Text

    out = Console()
    out.print(Text(f"prompt: {args.prompt}", style="bold"))
    width = max(30, (out.width - 4) // 2)
    out.print(Columns([Panel(Text(printable(tuned) or "(nothing)"), title=f"tuned: {weights.label}", width=width,
                             border_style="green"),
                       Panel(Text(printable(base) or "(nothing)"), title="base", width=width, border_style="dim")]))
    return 0
