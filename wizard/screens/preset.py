"""Step 1: a preset prefills every later step (or let the planner decide from the data)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from llmwizard.wizard.screens.base import StepScreen

NO_PRESET = "-"


class PresetScreen(StepScreen):
    STEP = 0
    HELP = ("Fine-tune a language model on the hardware you have. Pick a preset for your dataset's "
            "size, or let the planner decide from the data. Arrows choose, Enter or Ctrl+N goes on.")

    def body(self) -> ComposeResult:
        yield OptionList(id="presets")
        yield Static(id="preset-detail", classes="detail")

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
        presets = self.query_one("#presets", OptionList)
        presets.add_options(options)
        chosen = self.state.preset if self.state.preset in self.descriptions else NO_PRESET
        presets.highlighted = [option.id for option in options].index(chosen)
        presets.focus()

    @on(OptionList.OptionHighlighted, "#presets")
    def highlighted(self, event: OptionList.OptionHighlighted) -> None:
        key = event.option.id or NO_PRESET
        self.query_one("#preset-detail", Static).update(self.descriptions.get(key, ""))

    @on(OptionList.OptionSelected, "#presets")
    def selected(self, event: OptionList.OptionSelected) -> None:
        self.action_next()

    def action_next(self) -> None:
        presets = self.query_one("#presets", OptionList)
        option = presets.highlighted_option
        key = option.id if option is not None else NO_PRESET
        chosen = None if key == NO_PRESET else key
        if chosen != self.state.preset:
            self.state.preset = chosen
            self.state.overrides.clear()  # what-if edits were made against the old preset
        self.wizard.goto(self.STEP + 1)
