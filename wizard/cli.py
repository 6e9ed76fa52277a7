"""The `llmwizard` command: argument parsing, subcommands and the headless flow.

Only argparse is imported at module level, so `llmwizard --help` answers at once; each command
imports what it needs. A UserError anywhere becomes a short panel on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmwizard.autotune.data.dataset import DatasetProfile
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.machine.hardware import HardwareProfile
    from llmwizard.autotune.model.model_spec import ModelSpec
    from llmwizard.autotune.plan import Plan

SUBCOMMANDS = ("plan", "estimate", "export", "run", "resume", "watch", "stop", "status", "runs", "report", "merge",
               "try", "detect", "presets", "calibration")

DESCRIPTION = """\
Fine-tune an LLM on the hardware you have: detect it, plan a run that fits, export configs
that run without llmwizard, launch, and watch the loss.

  llmwizard                                 the interactive wizard
  llmwizard --preset small-dataset --yes    headless: plan, export, launch, live loss
  llmwizard plan|estimate|export|run|resume|watch|stop|status|runs|report|merge|try|detect|presets|calibration ...
                                            (see `llmwizard COMMAND --help`)
"""


def _plan_inputs(parser: argparse.ArgumentParser) -> None:
    from llmwizard.autotune.schema import (
        BatchSize,
        Beta,
        Epochs,
        EvalFraction,
        Generations,
        GiBAmount,
        Launcher,
        LearningRate,
        LoraRank,
        LrScheduler,
        Method,
        NodeCount,
        Offload,
        Optimizer,
        Precision,
        ProcessCount,
        Reference,
        RewardName,
        StepCount,
        Strategy,
        Task,
        Temperature,
        TokenLength,
        Tracker,
        choices,
        flag_type,
    )

    group = parser.add_argument_group("what to train, and on what")
    group.add_argument("--model", help="local model directory, catalog name (llama-3.1-8b, qwen2.5-7b, ...) or hub id; default: the embedded tiny model")
    group.add_argument("--dataset", help="JSONL/JSON/CSV/Parquet file or hub name; default: the bundled arithmetic set")
    group.add_argument("--preset", help="preset name or YAML file (see `llmwizard presets`)")
    group.add_argument("--gpus", help="plan for hardware you don't have: 4xRTX4090, 8xH100-80GB, 2x24GB, cpu")
    group.add_argument("--nodes", type=flag_type(NodeCount), help="number of machines (with --gpus)")
    group.add_argument("--host-ram", type=flag_type(GiBAmount), metavar="GIB",
                       help="host RAM per machine in GiB, for --gpus (default: typical for those GPUs)")
    group.add_argument("--processes", type=flag_type(ProcessCount),
                       help="processes per machine (on the CPU: ranks to run)")
    task = parser.add_argument_group("preference and reward tuning (docs/tasks.md)")
    task.add_argument("--task", choices=choices(Task),
                      help="what the run optimises: sft (default), dpo, orpo, kto or grpo")
    task.add_argument("--beta", type=flag_type(Beta),
                      help="DPO/KTO reward scale, ORPO's lambda, GRPO's KL weight (default: the task's published value)")
    task.add_argument("--reference", choices=choices(Reference),
                      help="where the reference log-probs come from (default: the cheapest that fits)")
    task.add_argument("--num-generations", type=flag_type(Generations), help="GRPO: completions per prompt (default 8)")
    task.add_argument("--max-completion-length", type=flag_type(TokenLength),
                      help="GRPO: tokens generated per completion (default 512)")
    task.add_argument("--temperature", type=flag_type(Temperature), help="GRPO: sampling temperature (default 1.0)")
    task.add_argument("--reward", dest="rewards", nargs="+", type=flag_type(RewardName), metavar="MODULE.FUNCTION",
                      help="GRPO: reward functions (default: the exact answer of each row's `answer`)")
    tune = parser.add_argument_group("overrides (default: decided by the planner)")
    tune.add_argument("--method", choices=choices(Method))
    tune.add_argument("--strategy", choices=choices(Strategy))
    tune.add_argument("--offload", choices=choices(Offload))
    tune.add_argument("--launcher", choices=choices(Launcher))
    tune.add_argument("--epochs", type=flag_type(Epochs))
    tune.add_argument("--max-steps", type=flag_type(StepCount), help="stop after this many optimizer steps")
    tune.add_argument("--learning-rate", "--lr", type=flag_type(LearningRate), dest="learning_rate")
    tune.add_argument("--lora-r", type=flag_type(LoraRank))
    tune.add_argument("--max-length", type=flag_type(TokenLength))
    tune.add_argument("--allow-truncation", action="store_true", default=None,
                      help="train even when examples are longer than the model allows (they are cut)")
    tune.add_argument("--micro-batch", type=flag_type(BatchSize))
    tune.add_argument("--effective-batch", type=flag_type(BatchSize))
    tune.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                      help="activation checkpointing on/off")
    tune.add_argument("--precision", choices=choices(Precision))
    tune.add_argument("--optimizer", choices=choices(Optimizer))
    tune.add_argument("--eval-fraction", type=flag_type(EvalFraction),
                      help="share of rows held out for evaluation (0 = none, under 0.5)")
    tune.add_argument("--report-to", nargs="+", choices=choices(Tracker), metavar="TRACKER",
                      help=f"experiment trackers ({', '.join(choices(Tracker))}; several allowed; default: none)")
    tune.add_argument("--probe", action=argparse.BooleanOptionalAction, default=None,
                      help="run a few measured steps of the plan first and correct it (default: on with GPUs)")
    tune.add_argument("--eval-steps", type=flag_type(StepCount),
                      help="evaluate and checkpoint every N steps (default: once per epoch)")
    tune.add_argument("--lr-scheduler", choices=choices(LrScheduler), help="learning-rate schedule (default: cosine)")
    tune.add_argument("--train-vision-tower", action="store_true", default=None,
                      help="vision-language models with LoRA: adapt the vision tower too (default: frozen)")
    tune.add_argument("--trust-remote-code", action="store_true", default=None,
                      help="run the model's own code (config.json auto_map, an unknown model_type) to count and "
                           "train it; without it such a model is refused")
    tune.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None,
                      help="padding-free packing of examples into rows of max length (default: off)")
    tune.add_argument("--context-parallel", type=flag_type(ProcessCount), metavar="N",
                      help="split each sequence over N GPUs (FSDP2 context parallelism; GPUs only)")
    tune.add_argument("--activation-offloading", action=argparse.BooleanOptionalAction, default=None,
                      help="keep saved activations in host RAM (TRL; GPUs only; default: the planner decides)")
    tune.add_argument("--liger-kernel", action=argparse.BooleanOptionalAction, default=None,
                      help="Liger's fused Triton kernels (GPUs only; default: off)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmwizard", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _plan_inputs(parser)
    parser.add_argument("--yes", "-y", action="store_true", help="headless: no questions, launch the plan")
    parser.add_argument("--output-dir", default="runs", help="where run directories are created (default: ./runs)")
    parser.add_argument("--no-launch", action="store_true", help="stop after exporting the run directory")
    return parser


def build_subparser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"llmwizard {command}")
    if command in ("plan", "export"):
        parser.description = {"plan": "Print the plan: every choice and its reason.",
                              "export": "Write a run directory without launching it."}[command]
        _plan_inputs(parser)
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        if command == "export":
            parser.add_argument("--out", required=True, help="directory to write the run files into")
            parser.add_argument("--force", action="store_true",
                                help="export into a non-empty directory (output/, metrics.jsonl and train.log are kept)")
            from llmwizard.autotune import schema

            parser.add_argument("--target", nargs="+", type=schema.flag_type(schema.Target), default=[],
                                metavar="{" + ",".join(schema.choices(schema.Target)) + "}",
                                help="also write the run for these systems: skypilot.yaml, trainjob.yaml (Kubeflow "
                                     "Trainer v2), ray_train.py (Ray Train); see docs/targets.md")
    elif command == "estimate":
        from llmwizard.autotune import schema

        parser.description = "Per-GPU memory for one setup, by component."
        parser.add_argument("--model", required=True)
        parser.add_argument("--gpus", required=True, help="e.g. 1xRTX4090, 8xH100-80GB, 2x24GB")
        parser.add_argument("--nodes", type=schema.flag_type(schema.NodeCount))
        parser.add_argument("--host-ram", type=schema.flag_type(schema.GiBAmount), metavar="GIB",
                            help="host RAM per machine in GiB")
        parser.add_argument("--method", choices=schema.choices(schema.Method), default="lora")
        parser.add_argument("--trust-remote-code", action="store_true",
                            help="run the model's own code (auto_map, an unknown model_type) to count it")
        parser.add_argument("--seq", type=schema.flag_type(schema.TokenLength), required=True,
                            help="sequence length in tokens")
        parser.add_argument("--batch", type=schema.flag_type(schema.BatchSize), required=True,
                            help="micro-batch per GPU")
        parser.add_argument("--strategy", choices=schema.choices(schema.Strategy))
        parser.add_argument("--offload", nargs="?", const="optimizer", choices=schema.choices(schema.Offload),
                            help="offload to host RAM: optimizer states (the default), or params (weights too)")
        parser.add_argument("--checkpointing", action="store_true")
        parser.add_argument("--lora-r", type=schema.flag_type(schema.LoraRank), default=8)
        parser.add_argument("--precision", choices=schema.choices(schema.Precision))
        parser.add_argument("--optimizer", choices=schema.choices(schema.Optimizer), default="adamw")
        parser.add_argument("--attention", choices=schema.choices(schema.Attention), default="sdpa")
        parser.add_argument("--context-parallel", type=schema.flag_type(schema.ProcessCount), metavar="N",
                            help="GPUs one sequence is split over (FSDP2 context parallelism, or Ulysses with "
                                 "zero2/zero3)")
        parser.add_argument("--activation-offloading", action="store_true",
                            help="TRL's activation offloading: saved activations to host RAM (GPUs only)")
        parser.add_argument("--liger-kernel", action="store_true",
                            help="Liger's RMSNorm and gated-MLP kernels (GPUs only)")
        parser.add_argument("--json", action="store_true")
    elif command in ("run", "resume"):
        parser.description = {
            "run": "Launch a run directory (or its plan.yaml) with the live view; its files are exported again "
                   "from plan.yaml first.",
            "resume": "Continue a stopped or failed run from its last checkpoint, with its plan.yaml."}[command]
        parser.add_argument("target", help="run directory" + (" or plan.yaml" if command == "run" else ""))
        _run_dir_flags(parser, fresh=command == "run")
    elif command == "watch":
        parser.description = "Follow a run that another llmwizard (or an orphaned launch) is training; read-only."
        parser.add_argument("target", help="run directory")
    elif command == "stop":
        parser.description = "Stop the run working in a directory (its llmwizard, or orphaned ranks), with a checkpoint."
        parser.add_argument("target", help="run directory")
        parser.add_argument("--grace", type=_flag("Seconds"), default=30.0,
                            help="seconds for the ranks to save and exit before SIGKILL (default: 30)")
    elif command == "status":
        parser.description = "The runs under a directory (default: . if it is a run, else ./runs) and their state."
        parser.add_argument("target", nargs="?", help="a run directory or a directory of runs")
        parser.add_argument("--json", action="store_true")
    elif command == "runs":
        parser.description = ("The runs under a directory (default: . if it is a run, else ./runs): state, steps, "
                              "final train and eval loss, next-token accuracy, duration and size.")
        parser.add_argument("target", nargs="?", help="a run directory or a directory of runs")
        parser.add_argument("--json", action="store_true")
    elif command == "report":
        parser.description = ("The run's report.html (charts, plan, diagnostics): written again from the run's "
                              "files, its path printed, and opened in a browser when this is a terminal.")
        parser.add_argument("target", help="run directory")
        parser.add_argument("--no-open", action="store_true", help="print the path only")
    elif command == "merge":
        parser.description = ("Merge the LoRA adapter into the base model: safetensors, tokenizer and chat template "
                              "that plain transformers loads. From the best checkpoint by eval loss by default.")
        parser.add_argument("target", help="run directory")
        parser.add_argument("--out", help="a new directory for the merged model (default: RUN/merged)")
        parser.add_argument("--checkpoint", help="merge this checkpoint (e.g. checkpoint-40, or output) instead")
        parser.add_argument("--dequantize", action="store_true",
                            help="QLoRA: merge into the base loaded in 16-bit (the adapter was trained on 4-bit weights)")
    elif command == "try":
        parser.description = "Generate from the tuned model and from the base, side by side, with the chat template."
        parser.add_argument("target", help="run directory")
        parser.add_argument("prompt", help="the user message")
        parser.add_argument("--max-new-tokens", type=_flag("NewTokens"), default=64)
        parser.add_argument("--checkpoint", help="try this checkpoint (e.g. checkpoint-40) instead of the best")
        parser.add_argument("--json", action="store_true")
    elif command == "detect":
        parser.description = "What this machine has: GPUs, memory, interconnect, host RAM."
        parser.add_argument("--json", action="store_true")
    elif command == "presets":
        parser.description = ("List the presets (bundled, and yours in the directory named at the end) with the "
                              "command each is for; `llmwizard presets show NAME` prints one.")
        parser.add_argument("action", nargs="?", choices=["list", "show"], default="list")
        parser.add_argument("name", nargs="?", help="with show: a preset name or the path of a preset YAML file")
    elif command == "calibration":
        parser.description = ("What probes measured on this machine (measured / expected peak, measured / "
                              "predicted tokens per second), which later estimates use.")
        parser.add_argument("--reset", action="store_true", help="forget every measurement (delete the store)")
        parser.add_argument("--json", action="store_true")
    return parser


def _run_dir_flags(parser: argparse.ArgumentParser, fresh: bool) -> None:
    edits = parser.add_mutually_exclusive_group()
    edits.add_argument("--keep-edits", action="store_true",
                       help="launch run files edited by hand as they are (plan.yaml's values for them do not apply)")
    edits.add_argument("--discard-edits", action="store_true",
                       help="export hand-edited run files again from plan.yaml (the edits kept as NAME.edited-<time>)")
    if fresh:
        parser.add_argument("--probe", action=argparse.BooleanOptionalAction, default=None,
                            help="probe the plan with a few measured steps first (default: plan.yaml's `probe`)")
        parser.add_argument("--fresh", action="store_true",
                            help="train a finished or earlier run again from the start (its results move to previous-<time>/)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from llmwizard.autotune.errors import UserError
    from llmwizard.runner.session.output import install as route_output_through_one_writer

    route_output_through_one_writer()  # a closed pipe or a hung-up terminal never raises (runner/session/output.py)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            _exit_on_sigterm()
            args = build_subparser(argv[0]).parse_args(argv[1:])
            return int(globals()[f"cmd_{argv[0]}"](args) or 0)
        args = build_parser().parse_args(argv)
        if args.yes or args.no_launch or not sys.stdin.isatty():
            _exit_on_sigterm()
            return cmd_headless(args)
        return cmd_wizard(args)
    except UserError as error:
        _print_error(error)
        return error.exit_code
    except KeyboardInterrupt:
        print("\nllmwizard: interrupted", file=sys.stderr)
        return 130


def _exit_on_sigterm() -> None:
    """SIGTERM ends the command with exit code 143 (128 + 15) through Python's unwinding, so held
    run locks are released; a running session turns it into a stop of every rank first."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, handler)


def _print_error(error: Any) -> None:
    from rich.console import Console
    from rich.panel import Panel

    from rich.text import Text

    body = Text(error.message)  # plain text: a value such as [bogus] or a path may hold brackets
    if error.fix:
        body.append("\nFix: ", style="bold").append(error.fix)
    Console(stderr=True).print(Panel(body, title=f"[bold red]{error.title}[/]", border_style="red",
                                     expand=False))


# ----------------------------------------------------------------------------- shared steps

def _hardware(args: argparse.Namespace) -> HardwareProfile:
    from llmwizard.autotune.machine import hardware
    from llmwizard.autotune.errors import UserError

    if getattr(args, "gpus", None):
        return hardware.from_spec(args.gpus, nodes=args.nodes, host_ram_gib=getattr(args, "host_ram", None))
    # Both describe hardware you plan for: without --gpus they would apply to this machine's
    # detected devices, which the user did not describe.
    for flag, value in (("--nodes", getattr(args, "nodes", None)), ("--host-ram", getattr(args, "host_ram", None))):
        if value is not None and not (flag == "--nodes" and value == 1):
            raise UserError(f"{flag} {value:g} needs --gpus: it describes hardware you plan for.", title="Hardware",
                            fix=f"Add --gpus for one machine's GPUs (e.g. --gpus 8xH100-80GB {flag} {value:g}), "
                            f"or drop {flag} to plan for this machine.")
    return hardware.detect(getattr(args, "output_dir", "."))


def _goals(args: argparse.Namespace) -> Goals:
    """The preset, then every goal flag given (the same mapping the wizard uses)."""
    from llmwizard.wizard.core import goals_for

    return goals_for(args.preset, args)


def _inputs(args: argparse.Namespace) -> tuple[HardwareProfile, ModelSpec, DatasetProfile, Goals]:
    from llmwizard.autotune.plan.inputs import default_model, profile_for
    from llmwizard.autotune.model.model_spec import load_model_spec

    goals = _goals(args)
    hardware = _hardware(args)
    model = load_model_spec(args.model or default_model(goals.task_name), trust_remote_code=goals.trust_remote_code)
    return hardware, model, profile_for(model, args.dataset, goals.task_name), goals


def _make_plan(args: argparse.Namespace) -> tuple[Plan, HardwareProfile, ModelSpec, DatasetProfile]:
    from llmwizard.autotune.errors import UserError
    from llmwizard.autotune.plan.inputs import plan_for

    hardware, model, profile, goals = _inputs(args)
    try:
        return plan_for(hardware, model, profile, goals), hardware, model, profile
    except UserError as error:
        raise _with_smallest_change(error, args, hardware, model, profile) from None


def _flag_words(key: str, value: Any = None) -> str:
    """A goal setting as the flag that sets it: `--micro-batch 4`, `--no-checkpointing`."""
    flag = "--" + key.replace("_", "-")
    if value is None:
        return flag
    if isinstance(value, bool):
        return flag if value else "--no-" + key.replace("_", "-")
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def _with_smallest_change(error: Any, args: argparse.Namespace, hardware: HardwareProfile, model: ModelSpec,
                          profile: DatasetProfile) -> Any:
    """The planner's refusal, with the smallest change of the flags given that makes a plan (the
    core's search, llmwizard.autotune.plan.refusal), in flag words."""
    from llmwizard.autotune.errors import UserError
    from llmwizard.autotune.plan.inputs import plan_for
    from llmwizard.autotune.plan.refusal import PIN_ORDER, smallest_change
    from llmwizard.wizard.core import goals_for

    pinned = {key: getattr(args, key) for key in PIN_ORDER if getattr(args, key, None) is not None}
    if not pinned:
        return error
    unpinned = argparse.Namespace(**{**vars(args), **{key: None for key in pinned}})
    found = smallest_change(
        lambda settings: plan_for(hardware, model, profile, goals_for(args.preset, unpinned, settings)), pinned, error)
    changes = []
    for fix in found.fixes:
        change = f"drop {_flag_words(fix.key, fix.value)} (the planner picks {_picks(fix.key, fix.cleared)})"
        if fix.largest is not None:
            change = f"{_flag_words(fix.key, fix.largest)} or less, or " + change
        if fix.others:
            change += "; " + ", ".join(_flag_words(fix.key, other) for other in fix.others) + " also work"
        changes.append(change)
    if found.together:
        changes.append("drop " + " and ".join(_flag_words(key, pinned[key]) for key in found.pinned)
                       + " together (no one of them alone makes a plan)")
    if not changes:
        return error
    smallest = "; or ".join(changes)
    words = f"Smallest change of what you set: {smallest}."
    return UserError(error.message, title=error.title, fix=f"{error.fix} {words}" if error.fix else words)


def _picks(key: str, plan: Plan) -> str:
    """What the planner chose for `key` in `plan`, in the plan's own terms."""
    values = {"strategy": plan.strategy + (f" with {plan.offload} offload" if plan.offload != "none" else ""),
              "checkpointing": "on" if plan.activation_checkpointing else "off",
              "lora_r": str(plan.lora.r) if plan.lora else "full fine-tuning",
              "max_steps": f"{plan.epochs:g} epochs"}
    if key in values:
        return values[key]
    value = getattr(plan, key, None)
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def calibration_for(hardware: HardwareProfile, model: ModelSpec, method: str) -> dict[str, Any]:
    """Earlier probes' factors (llmwizard.autotune.plan.inputs); a store that is damaged or not ours is
    said on stderr and ignored."""
    from llmwizard.autotune.plan import inputs

    factors, warnings = inputs.calibration_for(hardware, model, method)
    if warnings:
        from rich.console import Console

        console = Console(stderr=True)
        for warning in warnings:
            console.print(f"warning: {warning}", style="yellow", highlight=False, soft_wrap=True, markup=False)
    return factors


# ----------------------------------------------------------------------------- commands

def cmd_presets(args: argparse.Namespace) -> int:
    from llmwizard.autotune.errors import UserError
    from llmwizard.presets import all_presets, load_preset, preset_path, user_preset_dir

    if args.action == "show":
        if not args.name:
            raise UserError("`llmwizard presets show` needs the preset to print.", title="Preset",
                            fix="Name one: llmwizard presets show small-dataset (see `llmwizard presets`).")
        load_preset(args.name)  # an unknown key or bad value exits 2 here, not at plan time
        sys.stdout.write(preset_path(args.name).read_text(encoding="utf-8"))
        return 0
    if args.name:
        raise UserError(f"Unexpected argument '{args.name}'.", title="Preset",
                        fix=f"Use `llmwizard presets show {args.name}` to print one preset.")
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("preset", no_wrap=True)
    table.add_column("for, and the command")
    for info in all_presets():
        load_preset(str(info.path))  # each listed preset passes the schema, or the listing says which fails
        name = info.name + (" (yours)" if info.user else "")
        table.add_row(escape(name), escape(info.description) + (f"\n[dim]{escape(info.command)}[/]" if info.command else ""))
    console = Console()
    console.print(table)
    console.print(f"\nYour own presets: {user_preset_dir()}/NAME.yaml (same keys; see `llmwizard presets show "
                  "small-dataset`), or --preset path/to/file.yaml.", highlight=False)
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    import json

    from llmwizard.autotune.machine.hardware import detect

    profile = detect()
    if args.json:
        print(json.dumps(profile.to_dict(), indent=2))
        return 0
    from rich.console import Console

    from llmwizard.wizard.detect_view import render_detect

    Console().print(render_detect(profile))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    plan, hardware, model, profile = _make_plan(args)
    if args.json:
        print(json.dumps(plan.to_json_summary(), indent=2))
        return 0
    from rich.console import Console

    from llmwizard.wizard.report import print_plan

    print_plan(Console(), plan, hardware, model, profile)
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    import json

    from llmwizard.autotune.machine import hardware as hw
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.memory import estimate
    from llmwizard.autotune.model.model_spec import load_model_spec
    from llmwizard.autotune.plan.planner import fixed_setup
    from llmwizard.autotune.plan.plan_steps import budget as process_budget

    hardware = hw.from_spec(args.gpus, nodes=args.nodes, host_ram_gib=args.host_ram)
    model = load_model_spec(args.model, trust_remote_code=args.trust_remote_code)
    goals = Goals(method=args.method, strategy=args.strategy, offload=args.offload, checkpointing=args.checkpointing,
                  precision=args.precision, optimizer=args.optimizer, lora_r=args.lora_r,
                  context_parallel=args.context_parallel, activation_offloading=args.activation_offloading or None,
                  liger_kernel=args.liger_kernel or None)
    setup, warnings = fixed_setup(hardware, model, goals, args.seq, args.batch, args.attention)
    setup.calibration = calibration_for(hardware, model, args.method) or None
    result = estimate(model, setup, process_budget(hardware, setup.gpus_per_node))
    host_ram = hardware.host_ram_available
    if args.json:
        from llmwizard.autotune.plan.search import HEADROOM

        # "fits": within the budget; "fits_with_headroom": within what a plan may use, the budget
        # less the planner's headroom (the text verdict's "fits").
        usable = int(result.budget * (1 - HEADROOM))
        print(json.dumps({**result.to_dict(), "usable": usable, "fits_with_headroom": result.total <= usable,
                          "host_ram_available": host_ram, "warnings": warnings}, indent=2))
        return 0
    from rich.console import Console

    from llmwizard.wizard.report import print_estimate

    console = Console()
    offload = f" + {setup.offload} offload" if setup.offload != "none" else ""
    parts = [model.name, args.method, setup.strategy + offload, f"{setup.num_gpus} device(s)"]
    parts += [f"{setup.cp} per sequence"] if setup.cp > 1 else []
    parts += ["activation offloading"] if setup.offload_activations else []
    parts += ["Liger"] if setup.liger else []
    print_estimate(console, result, ", ".join(parts), host_ram=host_ram)
    for warning in warnings:
        console.print(f"! {warning}", style="yellow")
    return 0


def cmd_calibration(args: argparse.Namespace) -> int:
    import json

    from llmwizard.autotune.machine.calibration import Store

    store = Store.load()
    if args.reset:
        removed = store.reset()
        print(f"Removed the calibration store {store.path}." if removed else
              f"No calibration store at {store.path}; nothing to reset.")
        return 0
    for warning in store.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    rows = []
    for key, entry in sorted(store.entries.items(), key=lambda item: item[0].text()):
        memory = entry.memory_factor()
        speed = entry.speed_factor()
        rows.append({"gpu": key.gpu, "family": key.family, "method": key.method, "strategy": key.strategy,
                     "memory_factor": memory.factor if memory else None, "probes": len(entry.memory),
                     "speed_factor": round(speed, 4) if speed else None, "speed_probes": len(entry.speed)})
    if args.json:
        print(json.dumps({"path": str(store.path), "entries": rows}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not rows:
        console.print(f"No calibration yet ({store.path}): a run with --probe measures one.")
        return 0
    table = Table(title=f"calibration: {store.path}", title_justify="left", header_style="bold")
    for name in ("GPU", "model family", "method", "strategy", "memory x", "probes", "tokens/s x"):
        table.add_column(name, justify="right" if name.endswith("x") or name == "probes" else "left")
    for row in rows:
        table.add_row(str(row["gpu"]), str(row["family"]), str(row["method"]), str(row["strategy"]),
                      f"{row['memory_factor']:.2f}" if row["memory_factor"] else "-", str(row["probes"]),
                      f"{row['speed_factor']:.2f}" if row["speed_factor"] else "-")
    console.print(table)
    console.print("memory x: measured / expected peak, applied to later estimates of the same key; "
                  "tokens/s x: measured / predicted speed (shown, not applied).", style="dim")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import json

    from llmwizard.runner.export import export

    from llmwizard.runner.export.safe_files import check_target
    from llmwizard.wizard.run_commands import check_export_target

    out = Path(args.out)
    check_target(out, "--out")  # a name the kernel refuses (/proc, over 255 bytes) is named, not a traceback
    check_export_target(out, args.force)
    plan, *_ = _make_plan(args)
    if args.target:
        import dataclasses

        plan = dataclasses.replace(plan, targets=list(dict.fromkeys(args.target)))
    _check_writable(out)
    # Without --force the directory must still be empty once the export holds its lock.
    written = export(plan, out, edits="discard" if args.force else "refuse", into_empty=not args.force)
    if args.json:
        print(json.dumps({"dir": str(out.resolve()), "files": [p.name for p in written]}))
    else:
        print(f"Wrote {len(written)} files to {out}: {', '.join(p.name for p in written)}")
        import shlex  # the paths as a shell reads them back: spaces and `$` quoted

        launch, run = shlex.join(["bash", str(out / "launch.sh")]), shlex.join(["llmwizard", "run", str(out)])
        print(f"Run it with: {launch}   or   {run}")
    return 0


def cmd_run(args: argparse.Namespace, resume: bool = False) -> int:
    from llmwizard.wizard import run_commands

    return run_commands.cmd_run(args, resume=resume)


def cmd_resume(args: argparse.Namespace) -> int:
    return cmd_run(args, resume=True)


def cmd_watch(args: argparse.Namespace) -> int:
    from llmwizard.wizard.run_commands import cmd_watch as follow

    return follow(args)


def cmd_stop(args: argparse.Namespace) -> int:
    from llmwizard.wizard.run_commands import cmd_stop as stop

    return stop(args)


def cmd_status(args: argparse.Namespace) -> int:
    from llmwizard.wizard.run_commands import cmd_status as status

    return status(args)


def cmd_runs(args: argparse.Namespace) -> int:
    from llmwizard.wizard.run_commands import cmd_runs as runs

    return runs(args)


def cmd_report(args: argparse.Namespace) -> int:
    from llmwizard.wizard.after_commands import cmd_report as report

    return report(args)


def cmd_merge(args: argparse.Namespace) -> int:
    from llmwizard.wizard.after_commands import cmd_merge as merge

    return merge(args)


def cmd_try(args: argparse.Namespace) -> int:
    from llmwizard.wizard.after_commands import cmd_try as try_

    return try_(args)


def _flag(rule: str) -> Any:
    """The argparse `type=` of a number rule of the schema, by its name (schema.NUMBERS)."""
    from llmwizard.autotune.schema import NUMBERS, flag_type

    return flag_type(NUMBERS[rule])


def cmd_wizard(args: argparse.Namespace) -> int:
    from llmwizard.wizard.app import run_app

    return run_app(args)


def cmd_headless(args: argparse.Namespace) -> int:
    from rich.console import Console

    from llmwizard.runner.export import export
    from llmwizard.runner.session.launch import new_run_dir
    from llmwizard.wizard.report import print_plan

    console = Console()
    plan, hardware, model, profile = _make_plan(args)
    print_plan(console, plan, hardware, model, profile)
    run_dir = new_run_dir(Path(args.output_dir), plan.name)
    export(plan, run_dir)
    console.print(f"\nRun directory: [bold]{run_dir}[/]")
    if args.no_launch:
        import shlex  # the path as a shell reads it back (no rich markup either: `[` is part of a path)

        command = shlex.join(["bash", str(run_dir / "launch.sh")])
        console.print(f"Launch it with: {command}", markup=False, highlight=False)
        return 0
    from llmwizard.runner.session.session import run_session
    from llmwizard.wizard.run_commands import exit_code, signals_seen

    with signals_seen() as seen:
        code = run_session(console, plan, run_dir, may_grow=args.micro_batch is None)
    return exit_code(code, seen)


def _check_writable(directory: Path) -> None:
    import os

    from llmwizard.autotune.errors import UserError

    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UserError(f"Cannot write to {directory}.", title="Output directory",
                        fix="Choose a directory you can write to.")


if __name__ == "__main__":
    raise SystemExit(main())
