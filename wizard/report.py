"""Rich renderings of plans, estimates and run summaries for the headless CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from llmwizard.autotune.data.dataset import DatasetProfile
    from llmwizard.autotune.machine.hardware import HardwareProfile
    from llmwizard.autotune.memory import MemoryEstimate
    from llmwizard.autotune.model.model_spec import ModelSpec
    from llmwizard.autotune.plan import Plan

GiB = 1024**3
COMPONENTS = ("params", "grads", "optimizer", "activations", "logits", "overhead")
COLORS = {"params": "blue", "grads": "magenta", "optimizer": "yellow", "activations": "green",
           "logits": "cyan", "overhead": "white"}


def size_text(value: float) -> str:
    return f"{value / GiB:.2f} GiB" if value >= 0.1 * GiB else f"{value / 2**20:.1f} MiB"


def memory_bar(estimate: MemoryEstimate, width: int = 60) -> Text:
    """One bar split by component, scaled to the budget (or the total when over budget)."""
    scale = max(estimate.budget, estimate.total) or 1
    text = Text()
    used = 0
    for name in COMPONENTS:
        cells = round(getattr(estimate, name) / scale * width)
        used += cells
        text.append("█" * cells, style=COLORS[name])
    text.append("░" * max(0, width - used), style="dim")
    return text


def estimate_table(estimate: MemoryEstimate) -> RenderableType:
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
    table.add_column("component")
    table.add_column("per device", justify="right")
    table.add_column("", overflow="fold")
    for name in COMPONENTS:
        table.add_row(Text(name, style=COLORS[name]), size_text(getattr(estimate, name)))
    gpu = "CUDA context" in estimate.reserved_parts
    if estimate.tensor_peak:
        table.add_row(Text("tensor peak", style="dim"), Text(size_text(estimate.tensor_peak), style="dim"),
                      Text("torch.cuda.max_memory_allocated" if gpu else "bytes held by tensors", style="dim"))
        listed = ", ".join(f"{name} {size_text(value)}" for name, value in estimate.reserved_parts.items())
        table.add_row(Text("+ reserved", style="dim"), Text(size_text(sum(estimate.reserved_parts.values())),
                                                            style="dim"), Text(listed, style="dim"))
        if estimate.calibration:
            table.add_row(Text("x calibration", style="dim"), Text(f"x{estimate.calibration_factor:.2f}", style="dim"),
                          Text(estimate.calibration, style="dim"))
    table.add_row(Text("total", style="bold"), Text(size_text(estimate.total), style="bold"),
                  Text("expected in nvidia-smi" if gpu else "expected resident size (RSS)", style="dim")
                  if estimate.tensor_peak else "")
    from llmwizard.autotune.memory.reserved import headroom_words
    from llmwizard.autotune.plan.search import HEADROOM

    # "fits" is the planner's word: within the budget less its headroom (autotune.plan.search), as `plan` decides.
    usable = int(estimate.budget * (1 - HEADROOM))
    if estimate.total <= usable:
        verdict = Text(f"fits in {size_text(estimate.budget)}", style="green")
    elif estimate.fits:
        verdict = Text(f"fits only without the planner's {HEADROOM:.0%} headroom: {size_text(estimate.total)} of "
                       f"{size_text(estimate.budget)}, above the {size_text(usable)} a plan may use",
                       style="bold yellow")
    else:
        verdict = Text(f"does NOT fit in {size_text(estimate.budget)}", style="bold red")
    if estimate.peak_at:
        # Gradients and activations peak at different moments: the total is the worst moment.
        verdict.append(f"   (total = the peak of the step, during the {estimate.peak_at})", style="dim")
    parts: list[RenderableType] = [table, memory_bar(estimate), verdict]
    if estimate.fits and estimate.budget:
        parts.append(Text("headroom: " + headroom_words(estimate.total, estimate.budget, HEADROOM), style="dim"))
    return Group(*parts)


def print_estimate(console: Console, estimate: MemoryEstimate, title: str, host_ram: int | None = None) -> None:
    """`host_ram`: what the machine has available; the line says whether the estimate's host RAM
    (weights loaded before sharding, offloaded states and activations) fits in it."""
    extra = Text(f"trainable {estimate.trainable_params:,} of {estimate.total_params:,} parameters; "
                 f"host RAM needed {size_text(estimate.host_ram)}", style="dim")
    if host_ram is not None:
        over = estimate.host_ram > host_ram
        extra.append(f" of {size_text(host_ram)} available" + (" (does NOT fit)" if over else ""),
                     style="bold red" if over else "dim")
    console.print(Panel(Group(estimate_table(estimate), extra), title=title, expand=False))


def print_plan(console: Console, plan: Plan, hardware: HardwareProfile, model: ModelSpec,
               profile: DatasetProfile) -> None:
    for note in hardware.notes:
        console.print(f"[dim]{note}[/]")
    facts = Table.grid(padding=(0, 2))
    facts.add_row("[bold]hardware[/]", plan.hardware)
    facts.add_row("[bold]model[/]", f"{model.name}: {model.total_params:,} parameters, {model.num_layers} layers, "
                  f"vocab {model.vocab_size:,}")
    facts.add_row("[bold]dataset[/]", f"{profile.source}: {profile.num_examples:,} examples ({profile.format}), "
                  f"tokens mean {profile.mean_tokens:.0f} / p50 {profile.p50_tokens} / p99 {profile.p99_tokens} "
                  f"/ max {profile.max_tokens}")
    choices = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
    choices.add_column("choice", no_wrap=True)
    choices.add_column("reason")
    for key, reason in plan.reasons.items():
        choices.add_row(key.replace("_", " "), reason)
    parts: list[RenderableType] = [facts, Text(""), choices, Text(""), estimate_table(plan.estimate)]
    for warning in plan.warnings:
        parts.append(Text(f"! {warning}", style="yellow"))
    console.print(Panel(Group(*parts), title=f"plan: {plan.name}", border_style="blue"))
