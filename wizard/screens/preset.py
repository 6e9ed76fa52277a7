"""Step 1: a preset prefills every later step (or let the planner decide from the data), and what to
train: SFT, or a preference or reward task (DPO, ORPO, KTO, GRPO).

A preset made for a task (`task:` in it) chooses that task when it is highlighted; a preset without
one leaves the task the user chose (or --task, else SFT). Choosing another task than a task preset's
leaves that preset (its settings are the other task's), and the status line says so.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, OptionList, RadioButton, RadioSet, Static
from textual.widgets.option_list import Option

from llmwizard.wizard.screens.base import StepScreen
from llmwizard.wizard.screens.hardware import Choice

NO_PRESET = "-"


class PresetScreen(StepScreen):
    STEP = 0
    HELP = ("Pick a preset for your dataset's size, or none: the planner decides from the data. Tab moves to "
            "What to train. Arrows choose, Enter or Ctrl+N goes on.")

    def body(self) -> ComposeResult:
        from llmwizard.wizard import core

        yield OptionList(id="presets")
        yield Static(id="preset-detail", classes="detail")
        with Horizontal(id="task-row", classes="form-row"):
            yield Label("What to train", classes="field-label")
            with RadioSet(id="task"):
                for key in core.task_choices():
                    yield Choice(core.TASKS[key][0], id=key, value=key == self._first_task())
        yield Static(id="task-help", classes="detail")

    def _first_task(self) -> str:
        return self.state.task_name

    def on_mount(self) -> None:
        super().on_mount()
        from llmwizard.wizard import core

        options = [Option("No preset: decide everything from the data", id=NO_PRESET)]
        self.descriptions = {NO_PRESET: "Epochs, learning rate, LoRA rank and length come from Google's "
                                        "dataset-size rules once the dataset is read."}
        for name, description in core.list_presets():
            options.append(Option(f"{name}  —  {description.splitlines()[0]}", id=name))
            self.descriptions[name] = description
        if self.state.preset and self.state.preset not in self.descriptions:  # --preset FILE.yaml
            options.append(Option(f"{self.state.preset}  —  from --preset", id=self.state.preset))
            self.descriptions[self.state.preset] = f"The preset file {self.state.preset}."
        # The task each preset trains, for those made for one (a preset file that cannot be read is
        # named, with its fix, when the plan step reads it).
        from llmwizard.autotune.errors import UserError

        self.preset_tasks: dict[str, str] = {}
        for option in options[1:]:
            try:
                task = core.preset_task(option.id)
            except UserError:
                task = None
            if task is not None and option.id is not None:
                self.preset_tasks[option.id] = task
        # The task the user chose (or --task): what a preset without a task leaves in place.
        self.own_task = self.state.task or "sft"
        self.programmatic = 0           # task changes this screen made itself, not yet heard back
        presets = self.query_one("#presets", OptionList)
        presets.add_options(options)
        chosen = self.state.preset if self.state.preset in self.descriptions else NO_PRESET
        self.preset_shown = chosen      # the preset whose task the task choice follows
        presets.highlighted = [option.id for option in options].index(chosen)
        self._show_task_help()
        presets.focus()

    @on(OptionList.OptionHighlighted, "#presets")
    def highlighted(self, event: OptionList.OptionHighlighted) -> None:
        key = event.option.id or NO_PRESET
        self.query_one("#preset-detail", Static).update(self.descriptions.get(key, ""))
        if key == self.preset_shown:
            return
        self.preset_shown = key
        self._press_task(self.preset_tasks.get(key, self.own_task))

    def _press_task(self, task: str) -> None:
        """Show `task` as chosen (a preset's task, or the user's own back)."""
        if self.chosen_task() != task:
            self.programmatic += 1
            self.query_one(f"#{task}", RadioButton).value = True

    def chosen_task(self) -> str:
        pressed = self.query_one("#task", RadioSet).pressed_button
        return pressed.id if pressed is not None and pressed.id else "sft"

    @on(RadioSet.Changed, "#task")
    def task_changed(self, event: RadioSet.Changed) -> None:
        self._show_task_help()
        if self.programmatic:  # the screen followed a preset: not the user's choice
            self.programmatic -= 1
            return
        task = self.chosen_task()
        self.own_task = task
        preset = self.preset_shown
        if preset in self.preset_tasks and self.preset_tasks[preset] != task:
            # The preset's settings are its own task's (GRPO's generations, DPO's beta): leave it.
            presets = self.query_one("#presets", OptionList)
            self.preset_shown = NO_PRESET
            presets.highlighted = 0
            self.set_status(f"Preset {preset} trains {self._label(self.preset_tasks[preset])}: for "
                            f"{self._label(task)}, No preset is chosen.", "warning")
        else:
            self.set_status("")

    @staticmethod
    def _label(task: str) -> str:
        from llmwizard.wizard import core

        return core.TASKS[task][0]

    def _show_task_help(self) -> None:
        from llmwizard.wizard import core

        task = self.chosen_task()
        label, needs = core.TASKS[task]
        self.query_one("#task-help", Static).update(f"{label} needs {needs}")

    @on(OptionList.OptionSelected, "#presets")
    def selected(self, event: OptionList.OptionSelected) -> None:
        self.action_next()

    def action_next(self) -> None:
        from llmwizard.wizard import core

        presets = self.query_one("#presets", OptionList)
        option = presets.highlighted_option
        key = option.id if option is not None else NO_PRESET
        chosen = None if key == NO_PRESET else key
        task = self.chosen_task()
        if chosen != self.state.preset or task != self.state.task_name:
            self.state.overrides.clear()  # what-if edits were made against the old preset or task
        if not self.state.model_text.strip() and core.default_model(task) != core.default_model(self.state.task_name):
            # An empty Model field reads the task's default model: the model step reads it again
            # before the dataset and plan steps can be reached.
            self.state.model = None
            self.state.reached = min(self.state.reached, self.STEP + 1)
        self.state.preset = chosen
        self.state.task = task
        self.wizard.goto(self.STEP + 1)
