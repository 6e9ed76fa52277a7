"""Step 5: the plan: every choice with its reason, memory per device, and what-if edits.

Each edit re-plans at once in a thread worker through the planner with Goals overrides. The
screen shows one plan: the one Export writes (`state.plan`), or none. The first line of the
memory bar is the one verdict: "fits" for that plan, or, when the planner refuses the edits,
which values are not applied and why; the smallest change that makes a plan follows below it,
in the screen's own words, and the fields not applied are marked. A change of hardware, model or
dataset drops what was shown for the old inputs before re-planning. Export stays closed while no
plan stands, and says why where the user is looking (no dialog).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Label, Select, Static

from llmwizard.wizard.core import STRATEGY_WORDS
from llmwizard.wizard.messages import PlanReady, PlanRejected
from llmwizard.wizard.screens.base import StepScreen
from llmwizard.wizard.widgets.memory_bar import MemoryBar

if TYPE_CHECKING:
    from llmwizard.autotune.plan import Plan
    from llmwizard.wizard.core import Refusal

AUTO = "auto"
CHECKPOINTING = [("auto", AUTO), ("on", "on"), ("off", "off")]
ON_OFF = CHECKPOINTING
FIELD_LABELS = {"micro-batch": "Micro-batch", "lora-r": "LoRA rank", "learning-rate": "Learning rate",
                "epochs": "Epochs", "max-steps": "Max steps", "beta": "Beta", "num-generations": "Generations"}


class GoalValue(Validator):
    """A what-if field checked by the schema's rule for its Goals field; blank means "planner decides"."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def validate(self, value: str) -> ValidationResult:
        from llmwizard.wizard import core

        if not value.strip():
            return self.success()
        try:
            core.parse_goal_value(self.name, value)
        except ValueError as exc:
            return self.failure(str(exc))
        return self.success()


# (input id, Goals field)
NUMBER_FIELDS: list[tuple[str, str]] = [
    ("micro-batch", "micro_batch"), ("lora-r", "lora_r"), ("learning-rate", "learning_rate"),
    ("epochs", "epochs"), ("max-steps", "max_steps"),
]
# (select id, Goals field) for the selects of the third row: the precision, the optimizer and
# padding-free packing (the schema's choices, and "auto": the planner decides).
SAVER_SELECTS: list[tuple[str, str]] = [("precision", "precision"), ("optimizer", "optimizer"), ("packing", "packing")]
# (select id, Goals field, label) for the fourth row: the long-context and activation savers,
# GPUs per sequence (context parallelism), TRL's activation offloading and Liger's kernels.
LONG_SELECTS: list[tuple[str, str, str]] = [("context-parallel", "context_parallel", "GPUs/seq"),
                                            ("activation-offloading", "activation_offloading", "act offload"),
                                            ("liger", "liger_kernel", "Liger")]
CONTEXT_PARALLEL = [("auto", AUTO)] + [(str(n), str(n)) for n in (1, 2, 4, 8)]
# (input id, Goals field) of the task's typed fields, on the row a preference or reward task shows:
# beta for every such task, the completions per prompt for GRPO alone.
TASK_FIELDS: list[tuple[str, str]] = [("beta", "beta"), ("num-generations", "num_generations")]
# Where the reference log-probs may come from, per task (ORPO has none: no field). The planner's
# rules pick among them by the method (a LoRA policy is its own reference with the adapter off).
REFERENCES = {"dpo": ("copy", "adapter", "precompute"), "kto": ("copy", "adapter", "precompute"),
              "grpo": ("copy", "adapter", "none")}
REFERENCE_WORDS = {"copy": "a second, frozen copy of the weights", "adapter": "the policy with its adapter off",
                   "precompute": "log-probs computed in a pass before training", "none": "no reference model"}
# What the batch counts, per task (GRPO's micro-batch counts completions, DPO's pairs).
BATCH_UNITS = {"dpo": "pairs", "orpo": "pairs", "kto": "rows", "grpo": "completions"}
# Goals field -> the id of its field on this screen.
FIELD_IDS = ({name: field_id for field_id, name in NUMBER_FIELDS}
             | {"checkpointing": "checkpointing", "strategy": "strategy"}
             | {name: field_id for field_id, name in SAVER_SELECTS}
             | {name: field_id for field_id, name, _ in LONG_SELECTS}
             | {name: field_id for field_id, name in TASK_FIELDS} | {"reference": "reference"})


def summary_line(plan: Plan) -> Text:
    unit = "process" if plan.device == "cpu" else "GPU"
    # On several machines: per machine, then the machines ("2 GPUs x 2 nodes" is 4 GPUs).
    count = plan.processes_per_machine if plan.num_machines > 1 else plan.num_processes
    world = f"{count} {unit}" + (("es" if unit == "process" else "s") if count > 1 else "")
    steps = f"{plan.max_steps} steps" if plan.max_steps > 0 else f"{plan.epochs:g} epoch{'' if plan.epochs == 1 else 's'}"
    lora = f" r={plan.lora.r}" if plan.lora else ""
    text = Text()
    text.append(STRATEGY_WORDS.get(plan.strategy, plan.strategy), style="bold")  # as the strategy select says it
    if plan.offload != "none":  # the bar's small optimizer/params figures are in host RAM instead
        text.append(f" + {plan.offload} offload", style="bold")
    text.append(f" on {world}" + (f" x {plan.num_machines} nodes" if plan.num_machines > 1 else ""))
    unit = f" {BATCH_UNITS[plan.task]}" if plan.task in BATCH_UNITS else ""
    text.append(f" · {plan.method}{lora} · {plan.precision} · micro-batch {plan.micro_batch} x accum "
                f"{plan.grad_accum} = {plan.effective_batch}{unit} · {plan.max_length} tokens · {steps} · "
                f"lr {plan.learning_rate:g}")
    return text


def task_line(plan: Plan) -> Text:
    """A preference or reward task and its settings in one line (each one's reason is in the table
    below); empty for SFT."""
    from llmwizard.wizard import core

    settings = plan.task_settings
    if settings is None:
        return Text()
    text = Text(core.TASKS[plan.task][0], style="bold")
    if plan.task == "grpo":
        rewards = ", ".join(name.rsplit(".", 1)[-1] for name in settings.rewards)
        text.append(f" · {settings.num_generations} completions per prompt, up to {settings.max_completion_length} "
                    f"tokens each · temperature {settings.temperature:g} · reward {rewards}")
    text.append(f" · beta {settings.beta:g} · reference {settings.reference}")
    if settings.reference != "none":
        text.append(f" ({REFERENCE_WORDS[settings.reference]})")
    return text


def reasons_table(plan: Plan) -> Table:
    """Every choice with its reason, in the screen's words (no command-line flags)."""
    from llmwizard.wizard import core

    table = Table(box=None, padding=(0, 1), show_header=False, expand=True)
    table.add_column("choice", style="bold", no_wrap=True)
    table.add_column("reason", ratio=1)
    for key, reason in plan.reasons.items():
        table.add_row(key.replace("_", " "), core.in_wizard_words(reason))
        if key == "task_settings" and plan.estimate.components:
            table.add_row("task memory", task_memory(plan))
    return table


def task_memory(plan: Plan) -> str:
    """The task's own terms of the memory estimate (the reference copy, its forward, the generation
    cache): counted in the total the bar shows, though the bar's legend has SFT's parts only."""
    from llmwizard.wizard.report import size_text

    est = plan.estimate
    terms = ", ".join(f"{name} {size_text(size)}" for name, size in est.components.items())
    peak = f"; the peak is the {est.peak_at}" if est.peak_at in est.components else ""
    return f"{terms} per {device_word(plan)}, in the total above{peak}"


def probe_text(plan: Plan) -> Text:
    """Whether the run probes this plan first, and whether earlier probes calibrated its figure:
    both change what the user will see happen (a micro-batch may change; the figure is scaled)."""
    text = Text()
    if plan.probe:
        text.append("probe ", style="bold")
        text.append("Launch first measures it: a few real steps on the longest rows")
    if plan.estimate.calibration:  # "calibrated from 3 probes on this machine: x1.07"
        if text:
            text.append("\n")
        text.append(plan.estimate.calibration, style="bold")
        text.append(" (measured / expected peak)")
    return text


def warnings_text(plan: Plan) -> Text:
    """The plan's warnings, above the reasons where they are seen without scrolling."""
    from llmwizard.wizard import core

    return Text("\n").join(Text(f"! {core.in_wizard_words(warning)}", style="yellow") for warning in plan.warnings)


class PlanScreen(StepScreen):
    STEP = 4
    NEXT_LABEL = "Export"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+n", "next", "Export", priority=True)]

    def body(self) -> ComposeResult:
        from llmwizard.wizard import core

        yield Static("Planning ...", id="plan-summary")
        yield Static(id="plan-task")
        yield MemoryBar(id="memory")
        yield Static(id="plan-probe")
        yield Static(id="plan-problem", classes="problem")
        yield Static(id="plan-warnings")
        with Horizontal(id="task-fields", classes="form-row"):  # a preference or reward task's own fields
            yield Label("beta", id="label-beta", classes="field-label")
            yield Input(id="beta", classes="num", compact=True, validators=[GoalValue("beta")],
                        validate_on=["changed", "submitted"])
            yield Label("reference", id="label-reference", classes="field-label")
            yield Select([("auto", AUTO)], value=AUTO, allow_blank=False, id="reference", compact=True)
            yield Label("generations", id="label-num-generations", classes="field-label")
            yield Input(id="num-generations", classes="num", compact=True, validators=[GoalValue("num_generations")],
                        validate_on=["changed", "submitted"])
        with Horizontal(classes="form-row"):
            yield Label("micro-batch", id="label-micro-batch", classes="field-label")
            yield Input(id="micro-batch", classes="num", compact=True, validators=[GoalValue("micro_batch")],
                        validate_on=["changed", "submitted"])
            yield Label("checkpointing", id="label-checkpointing", classes="field-label")
            yield Select(CHECKPOINTING, value=AUTO, allow_blank=False, id="checkpointing", compact=True)
            yield Label("strategy", id="label-strategy", classes="field-label")
            strategies = [(STRATEGY_WORDS.get(name, name), name) for name in core.strategy_choices()]
            yield Select([("auto", AUTO)] + strategies, value=AUTO, allow_blank=False, id="strategy", compact=True)
        with Horizontal(classes="form-row"):
            for field_id, name in NUMBER_FIELDS[1:]:
                yield Label(FIELD_LABELS[field_id].replace("Learning rate", "learning rate")
                            .replace("Epochs", "epochs").replace("Max steps", "max steps"),
                            id=f"label-{field_id}", classes="field-label")
                yield Input(id=field_id, classes="num", compact=True, validators=[GoalValue(name)],
                            validate_on=["changed", "submitted"])
        with Horizontal(classes="form-row"):
            yield Label("precision", id="label-precision", classes="field-label")
            yield Select([("auto", AUTO)] + [(name, name) for name in core.precision_choices()],
                         value=AUTO, allow_blank=False, id="precision", compact=True)
            yield Label("optimizer", id="label-optimizer", classes="field-label")
            yield Select([("auto", AUTO)] + [(name, name) for name in core.optimizer_choices()],
                         value=AUTO, allow_blank=False, id="optimizer", compact=True)
            yield Label("packing", id="label-packing", classes="field-label")
            yield Select(ON_OFF, value=AUTO, allow_blank=False, id="packing", compact=True)
        with Horizontal(classes="form-row"):
            for field_id, _, label in LONG_SELECTS:
                yield Label(label, id=f"label-{field_id}", classes="field-label")
                yield Select(CONTEXT_PARALLEL if field_id == "context-parallel" else ON_OFF, value=AUTO,
                             allow_blank=False, id=field_id, compact=True)
        with VerticalScroll(id="reasons-box"):
            yield Static(id="reasons")

    def on_mount(self) -> None:
        self.serial = 0
        self.planned_for: tuple[Any, ...] | None = None
        self.last_plan: Plan | None = None       # the last plan that worked, for these inputs
        self.refusal: Refusal | None = None      # why no plan stands, when the planner refused
        self.field_error: str | None = None      # why no plan stands, when a field is not a value
        self.task_shown: str | None = None       # the task whose fields the task row shows
        super().on_mount()
        self._show_task_fields()
        self._fill_overrides()

    def _show_task_fields(self) -> None:
        """The task row for the task of step 1: beta for a preference or reward task, where the
        reference comes from (not for ORPO, which has none), the completions per prompt for GRPO.
        Nothing of it for SFT."""
        task = self.state.task_name
        if task == self.task_shown:
            return
        self.task_shown = task
        self.query_one("#task-fields").display = task != "sft"
        self.set_class(task != "sft", "-task")  # one more row: the rows close up (app.tcss)
        for field_id, shown in (("beta", task != "sft"), ("reference", task in REFERENCES),
                                ("num-generations", task == "grpo")):
            self.query_one(f"#{field_id}").display = shown
            self.query_one(f"#{field_id}").disabled = not shown  # a hidden field takes no focus
            self.query_one(f"#label-{field_id}").display = shown
        reference = self.query_one("#reference", Select)
        choices = REFERENCES.get(task, ())
        kept = reference.value if reference.value in choices else AUTO
        reference.set_options([("auto", AUTO)] + [(name, name) for name in choices])
        reference.value = kept

    def _task_inputs(self) -> list[tuple[str, str]]:
        """The task's typed fields shown for this task."""
        return [(field_id, name) for field_id, name in TASK_FIELDS if not self.query_one(f"#{field_id}").disabled]

    def _fill_overrides(self) -> None:
        """Show the edits already made (or given as flags), blank where the planner decides."""
        overrides = self.state.overrides
        for field_id, name in TASK_FIELDS:
            value = overrides.get(name)
            self.query_one(f"#{field_id}", Input).value = "" if value is None else f"{value:g}"
        self.query_one("#reference", Select).value = overrides.get("reference") or AUTO
        for field_id, name in NUMBER_FIELDS:
            value = overrides.get(name)
            self.query_one(f"#{field_id}", Input).value = "" if value is None else f"{value:g}"
        checkpointing = overrides.get("checkpointing")
        self.query_one("#checkpointing", Select).value = AUTO if checkpointing is None else (
            "on" if checkpointing else "off")
        self.query_one("#strategy", Select).value = overrides.get("strategy") or AUTO
        self.query_one("#precision", Select).value = overrides.get("precision") or AUTO
        self.query_one("#optimizer", Select).value = overrides.get("optimizer") or AUTO
        packing = overrides.get("packing")
        self.query_one("#packing", Select).value = AUTO if packing is None else ("on" if packing else "off")
        for field_id, name, _ in LONG_SELECTS:
            value = overrides.get(name)
            self.query_one(f"#{field_id}", Select).value = (
                AUTO if value is None else str(value) if name == "context_parallel" else ("on" if value else "off"))

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if self.planned_for != self.state.plan_inputs():
            # A new preset or task cleared the edits on step 1: the fields show what applies.
            self._show_task_fields()
            self._fill_overrides()
            self.replan()

    def replan(self) -> None:
        """Plan again for the current edits. Until the answer lands no plan stands (Export waits),
        and when the hardware, model or dataset changed nothing of the old plan stays in view."""
        self.serial += 1
        inputs = self.state.plan_inputs()
        if inputs != self.planned_for:
            self.last_plan, self.refusal = None, None
            self.query_one("#plan-summary", Static).update(Text("Planning ...", style="dim"))
            self.query_one(MemoryBar).show(None, headline=Text("Planning ...", style="dim"))
            self.query_one("#reasons", Static).update("")
            self.query_one("#plan-problem").display = False
            self._show_task_line(None)
            self._hide_warnings()
            self._mark_refused([])
        self.planned_for = inputs
        self.state.plan = None
        self.plan_worker(self.serial, dict(self.state.overrides))

    @work(thread=True, exclusive=True, exit_on_error=False, group="plan")
    def plan_worker(self, serial: int, overrides: dict[str, Any]) -> None:
        from llmwizard.autotune.errors import UserError
        from llmwizard.wizard import core

        state = self.state
        assert state.hardware is not None and state.model is not None and state.dataset is not None
        goals_with = state.goals_with

        try:
            plan = core.make_plan(state.hardware, state.model, state.dataset, goals_with(overrides))
        except UserError as error:
            refusal = core.explain_refusal(state.hardware, state.model, state.dataset, goals_with, overrides,
                                           error, self.last_plan)
            self.post_message(PlanRejected(serial, error, refusal))
            return
        self.post_message(PlanReady(serial, plan))

    @on(PlanReady)
    def plan_ready(self, message: PlanReady) -> None:
        if message.serial != self.serial:
            return
        plan = self.state.plan = self.last_plan = message.plan
        self.refusal = self.field_error = None
        self.query_one("#plan-problem", Static).update("")
        self.query_one("#plan-problem").display = False
        self._mark_refused([])
        self.query_one("#plan-summary", Static).update(summary_line(plan))
        self._show_task_line(plan)
        self.query_one(MemoryBar).show(plan.estimate, device_word(plan))
        self.query_one("#reasons", Static).update(reasons_table(plan))
        self.query_one("#reasons-box").remove_class("-stale")
        warnings = self.query_one("#plan-warnings", Static)
        warnings.update(warnings_text(plan))
        warnings.display = bool(plan.warnings)
        probe = self.query_one("#plan-probe", Static)
        probe.update(probe_text(plan))
        probe.display = bool(probe_text(plan))
        placeholders = {"micro-batch": plan.micro_batch, "lora-r": plan.lora.r if plan.lora else None,
                        "learning-rate": plan.learning_rate, "epochs": plan.epochs,
                        "max-steps": plan.max_steps if plan.max_steps > 0 else None,
                        "beta": plan.task_settings.beta if plan.task_settings else None,
                        "num-generations": plan.task_settings.num_generations if plan.task_settings else None}
        for field_id, value in placeholders.items():
            self.query_one(f"#{field_id}", Input).placeholder = "-" if value is None else f"{value:g}"
        self.set_status("")

    @on(PlanRejected)
    def plan_rejected(self, message: PlanRejected) -> None:
        if message.serial != self.serial:
            return
        self.state.plan = None
        refusal = self.refusal = message.refusal
        self.field_error = None
        headline = Text(refusal.verdict, style="bold red")
        device = device_word(self.last_plan) if self.last_plan else "GPU"
        self.query_one(MemoryBar).show(refusal.requested, device, headline=headline, caption="asked for: ")
        self._show_fix(refusal.fix)
        self._mark_refused([FIELD_IDS[name] for name in refusal.refused])
        self._hide_warnings()
        self.show_last_plan()
        self.set_status("Export is off until a plan stands.", "warning")

    def _show_task_line(self, plan: Plan | None, stale: bool = False) -> None:
        line = self.query_one("#plan-task", Static)
        text = task_line(plan) if plan is not None else Text()
        if stale:
            text.stylize("dim")
        line.update(text)
        line.display = bool(text)

    def _hide_warnings(self) -> None:
        """The warnings and the probe line belong to a plan: hidden while none stands."""
        self.query_one("#plan-warnings").display = False
        self.query_one("#plan-probe").display = False

    def _show_fix(self, fix: str | None) -> None:
        problem = self.query_one("#plan-problem", Static)
        problem.update(Text(f"Fix: {fix}", style="red") if fix else "")
        problem.display = bool(fix)

    def _mark_refused(self, field_ids: list[str]) -> None:
        """The fields whose values are not applied: marked in colour and, for a screen without colour,
        with a cross before the label."""
        for field_id in ["micro-batch", "checkpointing", "strategy", *[f for f, _ in NUMBER_FIELDS[1:]],
                         *[f for f, _ in SAVER_SELECTS], *[f for f, _, _ in LONG_SELECTS],
                         *[f for f, _ in TASK_FIELDS], "reference"]:
            refused = field_id in field_ids
            self.query_one(f"#{field_id}").set_class(refused, "-refused")
            label = self.query_one(f"#label-{field_id}", Label)
            words = str(label.content).removeprefix("✗ ")
            label.update(f"✗ {words}" if refused else words)
            label.set_class(refused, "-refused")

    def bad_fields(self) -> list[tuple[str, ValueError]]:
        """Every typed field whose text is not a value its rule allows, in screen order (all of them,
        so a second bad field is named with the first)."""
        from llmwizard.wizard import core

        bad: list[tuple[str, ValueError]] = []
        for field_id, name in self._task_inputs() + NUMBER_FIELDS:
            text = self.query_one(f"#{field_id}", Input).value.strip()
            if text:
                try:
                    core.parse_goal_value(name, text)
                except ValueError as exc:
                    bad.append((field_id, exc))
        return bad

    def field_problem(self, bad: list[tuple[str, ValueError]]) -> None:
        """Edits that are not values: no plan stands (a plan in flight is dropped) until each is fixed
        or cleared, and the verdict names every one of them."""
        self.serial += 1
        self.state.plan = None
        self.refusal = None
        lines = [f"{FIELD_LABELS.get(field_id, field_id.replace('-', ' '))}: {error}." for field_id, error in bad]
        self.field_error = " ".join(lines)
        self.query_one(MemoryBar).show(None, headline=Text("\n".join(lines), style="bold red"))
        self._show_fix(("type an allowed value in each, or clear it" if len(bad) > 1 else
                        "type an allowed value, or clear the field") + " to let the planner decide.")
        self._mark_refused([field_id for field_id, _ in bad])
        self._hide_warnings()
        self.show_last_plan()
        self.set_status(f"{self._names(bad)}: not an allowed value", "warning")

    @staticmethod
    def _names(bad: list[tuple[str, ValueError]]) -> str:
        return ", ".join(FIELD_LABELS.get(field_id, field_id) for field_id, _ in bad)

    def show_last_plan(self) -> None:
        """While no plan stands, the summary line shows the last one that worked for these inputs
        (dimmed, and said to be the last), and its reasons are dimmed."""
        summary = self.query_one("#plan-summary", Static)
        if self.last_plan is not None:
            stale = Text("last plan that worked (not exported): ", style="bold yellow")
            stale.append(summary_line(self.last_plan).plain, style="dim")
            summary.update(stale)
            self._show_task_line(self.last_plan, stale=True)
            self.query_one("#reasons-box").add_class("-stale")
        else:
            self._show_task_line(None)
            summary.update(Text("No plan yet: change what the message below names (Back for hardware, "
                                "model or dataset).", style="bold yellow"))
            self.query_one("#reasons", Static).update("")

    @on(Input.Changed, ".num")
    @on(Select.Changed)
    def edited(self) -> None:
        overrides: dict[str, Any] = {}
        from llmwizard.wizard import core

        bad = self.bad_fields()
        if bad:
            self.field_problem(bad)
            return
        for field_id, name in self._task_inputs() + NUMBER_FIELDS:
            text = self.query_one(f"#{field_id}", Input).value.strip()
            if text:
                overrides[name] = core.parse_goal_value(name, text)
        reference = self.query_one("#reference", Select)
        if not reference.disabled and reference.value != AUTO:
            overrides["reference"] = reference.value
        checkpointing = self.query_one("#checkpointing", Select).value
        if checkpointing != AUTO:
            overrides["checkpointing"] = checkpointing == "on"
        strategy = self.query_one("#strategy", Select).value
        if strategy != AUTO:
            overrides["strategy"] = strategy
        for field_id in ("precision", "optimizer"):
            value = self.query_one(f"#{field_id}", Select).value
            if value != AUTO:
                overrides[field_id] = value
        packing = self.query_one("#packing", Select).value
        if packing != AUTO:
            overrides["packing"] = packing == "on"
        for field_id, name, _ in LONG_SELECTS:
            value = self.query_one(f"#{field_id}", Select).value
            if value != AUTO:
                overrides[name] = int(str(value)) if name == "context_parallel" else value == "on"
        self.set_status("")
        if overrides != self.state.overrides or self.state.plan is None:
            self.state.overrides = overrides
            self.replan()

    def action_next(self) -> None:
        bad = self.bad_fields()  # never export the last valid plan under an invalid field
        if bad:
            self.set_status(f"{self._names(bad)}: fix or clear {'them' if len(bad) > 1 else 'it'} to export",
                            "error")
            self.query_one(f"#{bad[0][0]}", Input).focus()
            return
        if self.state.plan is not None:
            self.wizard.goto(self.STEP + 1)
            return
        if self.refusal is not None:
            self.set_status("No plan to export: see the fix above.", "error")
            if self.refusal.refused:
                self.query_one(f"#{FIELD_IDS[self.refusal.refused[0]]}").focus()
        else:
            self.set_status("Still planning ...", "warning")


def device_word(plan: Plan) -> str:
    return "process" if plan.device == "cpu" else "GPU"
