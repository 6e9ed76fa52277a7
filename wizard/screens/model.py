"""Step 3: the model (catalog search with completion, or a local directory) and the method."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.suggester import SuggestFromList
from textual.timer import Timer
from textual.widgets import Checkbox, Input, Label, OptionList, RadioButton, RadioSet, Static
from textual.widgets.option_list import Option

from llmwizard.wizard.messages import Completions, ModelLoaded
from llmwizard.wizard.screens.base import StepScreen, error_parts, error_text
from llmwizard.wizard.screens.hardware import Choice

if TYPE_CHECKING:
    from llmwizard.autotune.model.model_spec import ModelSpec

METHODS = {"full": "Full", "lora": "LoRA", "qlora": "QLoRA"}
# What an empty Model field reads: the embedded tiny model, or for a preference or reward task the
# same model after a short SFT warm-up (those tasks tune a model that already answers).
EMPTY_MODEL = {"sft": "empty: the embedded tiny model (trains anywhere)",
               "task": "empty: embedded:tiny-llama-sft, the tiny model after SFT on its sums"}
METHOD_HELP = {
    "full": "every weight trains: most memory, most capacity",
    "lora": "small adapters train, the base stays frozen: the usual choice",
    "qlora": "LoRA on a 4-bit base: least memory, needs an NVIDIA GPU",
}
RANKS = (4, 8, 16, 64)


def params_text(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def lora_share(model: ModelSpec, r: int) -> float:
    """The adapters' share of the parameters the trained model has: the frozen base plus the adapters
    (PEFT's "trainable%"), so below 100% even where rank-64 adapters outgrow a tiny model."""
    adapters = model.lora_params(r)
    return adapters / (model.total_params + adapters)


def model_facts(model: ModelSpec) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_row(Text(model.name, style="bold"),
                  f"{model.source}, {model.model_type}: {params_text(model.total_params)} parameters "
                  f"({model.total_params:,})")
    table.add_row("shape", f"{model.num_layers} layers x hidden {model.hidden_size}, MLP {model.intermediate_size}, "
                  f"{model.num_heads} heads ({model.num_kv_heads} KV), vocab {model.vocab_size:,}, "
                  f"{model.max_positions:,} positions")
    if model.moe is not None:  # Mixture-of-Experts: what runs per token is a share of what is stored
        table.add_row("experts", f"{model.moe.num_experts} per layer, {model.moe.experts_per_token} per token: "
                      f"{params_text(model.active_params)} of {params_text(model.total_params)} parameters active")
    shares = "   ".join(f"r={r}: {params_text(model.lora_params(r))} ({lora_share(model, r):.1%})" for r in RANKS)
    table.add_row("LoRA trains", shares + "  (share of all parameters, adapters included, as PEFT counts)")
    return table


class TowerBox(Checkbox):
    """The vision tower box, read without colour: a tick when on, blank when off."""

    @property
    def BUTTON_INNER(self) -> str:  # type: ignore[override]  # noqa: N802
        return "✓" if self.value else " "


class ModelScreen(StepScreen):
    STEP = 2
    ERROR_PLACE = "#model-facts"
    ERROR_FIELD = "#model"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("down", "matches", "Matches", show=False)]
    HELP = ("Type a model name from the catalog or a local directory with config.json; → accepts the "
            "suggestion, ↓ picks from the matches. Then choose how to train it.")

    def body(self) -> ComposeResult:
        with Horizontal(classes="form-row"):
            yield Label("Model", classes="field-label")
            yield Input(self.state.model_text, placeholder=EMPTY_MODEL["sft"], id="model", compact=True)
        yield OptionList(id="matches")
        yield Static("Reading the model ...", id="model-facts", classes="detail")
        with Horizontal(classes="form-row"):
            yield Label("Method", classes="field-label")
            with RadioSet(id="method"):
                chosen = self.state.method or self._default_method()
                for key, label in METHODS.items():
                    yield Choice(label, id=key, value=key == chosen)
        yield Static(id="method-help", classes="detail")
        with Horizontal(id="tower-row", classes="form-row"):  # shown for vision-language models only
            yield Label("Vision", classes="field-label")
            yield TowerBox("train the vision tower too (full fine-tuning trains it anyway)",
                           self._tower_default(), id="vision-tower", compact=True)
        with Horizontal(id="trust-row", classes="form-row"):  # shown for models that name their own code
            yield Label("Code", classes="field-label")
            yield TowerBox("run the model's own code (trust_remote_code): its Python runs on this machine",
                           self.state.trust_code, id="trust-code", compact=True)

    def on_mount(self) -> None:
        super().on_mount()
        self._timer: Timer | None = None

        self._show_method()
        self.query_one("#tower-row").display = False
        self.query_one("#trust-row").display = self.state.trust_code
        self._task_read = self.state.task_name
        self.query_one("#model", Input).placeholder = EMPTY_MODEL["sft" if self._task_read == "sft" else "task"]
        self.lookup(self.state.model_text)
        self.query_one("#model", Input).focus()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if self.state.method is None:  # the preset may have changed: show its method
            self.query_one(f"#{self._default_method()}", RadioButton).value = True
        self._follow_task()

    _task_read: str = "sft"   # the task of step 1 whose default model an empty field reads

    def _follow_task(self) -> None:
        """An empty field reads the task's default model (a preference or reward task starts from the
        embedded model after SFT): another task on step 1 reads it again."""
        task = self.state.task_name
        if task == self._task_read:
            return
        self._task_read = task
        field = self.query_one("#model", Input)
        field.placeholder = EMPTY_MODEL["sft" if task == "sft" else "task"]
        if not field.value.strip():
            self.lookup("")

    def _tower_default(self) -> bool:
        """The box as the user left it, else as the preset (or --train-vision-tower) sets it."""
        if self.state.vision_tower is not None:
            return self.state.vision_tower
        from llmwizard.wizard import core

        return bool(core.goals_for(self.state.preset, None).train_vision_tower)

    @on(Checkbox.Changed, "#vision-tower")
    def tower_changed(self, event: Checkbox.Changed) -> None:
        self.state.vision_tower = event.value

    @on(Checkbox.Changed, "#trust-code")
    def trust_changed(self, event: Checkbox.Changed) -> None:
        """Consent given or taken back: read the model again with it."""
        if event.value != self.state.trust_code:
            self.state.trust_code = event.value
            self.state.model = None
            self.lookup(self.query_one("#model", Input).value)

    def _default_method(self) -> str:
        """What the planner would choose for this model and preset: picking it leaves the choice to
        the planner (full fine-tuning for the embedded random-init model, else the preset's or LoRA)."""
        from llmwizard.wizard import core

        return core.default_method(self.state.preset, getattr(self, "_looked_up", None) or self.state.model)

    @work(thread=True, exclusive=True, exit_on_error=False, group="lookup")
    def lookup(self, text: str, advance: bool = False) -> None:
        """Matches for the text, then the model's spec: shown inline, or (on Next) raised."""
        from llmwizard.autotune.errors import UserError
        from llmwizard.wizard import core

        self.post_message(Completions("model", text, core.model_choices(text)))
        try:
            model = core.load_model(text, trust_remote_code=self.state.trust_code, task=self.state.task_name)
        except UserError as error:
            if advance:
                raise
            self.post_message(ModelLoaded(text, None, error))
            return
        self.post_message(ModelLoaded(text, model, None, advance))

    @on(Input.Changed, "#model")
    def typed(self, event: Input.Changed) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(0.25, lambda: self.lookup(event.value))

    @on(Input.Submitted, "#model")
    def submitted(self) -> None:
        self.action_next()

    @on(Completions)
    def completions(self, message: Completions) -> None:
        if message.text != self.query_one("#model", Input).value:
            return
        matches = self.query_one("#matches", OptionList)
        matches.set_options([Option(choice.label, id=choice.value) for choice in message.choices])
        self.query_one("#model", Input).suggester = SuggestFromList([c.value for c in message.choices],
                                                                    case_sensitive=False)

    @on(OptionList.OptionSelected, "#matches")
    def picked(self, event: OptionList.OptionSelected) -> None:
        model_input = self.query_one("#model", Input)
        model_input.value = event.option.id or ""
        model_input.focus()

    @on(ModelLoaded)
    def loaded(self, message: ModelLoaded) -> None:
        if message.name != self.query_one("#model", Input).value and not message.advance:
            return
        facts = self.query_one("#model-facts", Static)
        if message.model is None:
            assert message.error is not None
            title, text, fix = error_parts(message.error)
            facts.update(error_text(text, fix))
            self.query_one("#tower-row").display = False
            # a model that names its own code: the consent box is the fix
            self.query_one("#trust-row").display = self.state.trust_code or title == "Model code"
            return
        facts.update(model_facts(message.model))
        self.query_one("#tower-row").display = message.model.vision is not None
        self._looked_up = message.model
        if self.state.method is None:  # the method the planner takes for this model, shown as chosen
            self.query_one(f"#{self._default_method()}", RadioButton).value = True
        if message.advance:
            if self.state.model is None or self.state.model_text != message.name:
                self.state.model, self.state.model_text = message.model, message.name
            self.wizard.goto(self.STEP + 1)

    @on(RadioSet.Changed, "#method")
    def method_changed(self, event: RadioSet.Changed) -> None:
        chosen = event.pressed.id
        self.state.method = None if chosen == self._default_method() else chosen
        self._show_method()

    def _show_method(self) -> None:
        pressed = self.query_one("#method", RadioSet).pressed_button
        key = pressed.id if pressed is not None and pressed.id else "lora"
        self.query_one("#method-help", Static).update(f"{METHODS[key]}: {METHOD_HELP[key]}")

    def action_matches(self) -> None:
        """↓ in the model field moves to the list of matches."""
        matches = self.query_one("#matches", OptionList)
        if self.focused is self.query_one("#model", Input) and matches.option_count:
            matches.focus()
            matches.highlighted = 0

    def action_next(self) -> None:
        self.lookup(self.query_one("#model", Input).value, advance=True)
