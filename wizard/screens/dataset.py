"""Step 4: the dataset: format, example count, token lengths, and the dataset-size verdict.

The dataset is read for the task chosen on step 1 (DPO reads prompt/chosen/rejected pairs, GRPO
prompts): an empty field reads the task's bundled set, each part's lengths are shown apart, and a
dataset whose columns do not fit the task is refused under the field, naming its columns."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.suggester import SuggestFromList
from textual.timer import Timer
from textual.widgets import Input, Label, Static

from llmwizard.wizard.messages import Completions, DatasetProfiled
from llmwizard.wizard.screens.base import StepScreen
from llmwizard.wizard.widgets.histogram import TokenHistogram

if TYPE_CHECKING:
    from llmwizard.autotune.data.dataset import DatasetProfile
    from llmwizard.wizard.core import DatasetReport

FORMATS = {"messages": "chat messages", "prompt_completion": "prompt / completion", "text": "plain text",
           "preference": "prompt / chosen / rejected pairs", "unpaired_preference": "prompt / completion / label",
           "prompt_only": "prompts"}
# What an empty Dataset field reads, per task, in the placeholder's words.
BUNDLED = {"sft": "the bundled arithmetic examples", "dpo": "the bundled arithmetic pairs",
           "orpo": "the bundled arithmetic pairs", "kto": "the bundled arithmetic answers, labelled",
           "grpo": "the bundled arithmetic prompts"}
HELP_SFT = ("A .jsonl/.json/.csv/.parquet file or a Hugging Face dataset name; empty uses the bundled "
            "arithmetic set. Enter reads it with the model's tokenizer.")
# What each task reads, as the help line says it.
READS = {"dpo": "prompt/chosen/rejected pairs", "orpo": "prompt/chosen/rejected pairs",
         "kto": "prompt/completion/label rows (or pairs)", "grpo": "prompts (and the reward's columns)"}
# What the token figures of a task's profile measure (the longest sequence one forward reads).
WHOLE = {"dpo": "the prompt and the longer response", "orpo": "the prompt and the longer response",
         "kto": "the prompt and the completion", "grpo": "the prompt; completions are generated"}
# The parts of a row each task's trainer reads apart, as the profile measures them.
PARTS = {"dpo": ("prompt", "chosen", "rejected"), "orpo": ("prompt", "chosen", "rejected"),
         "kto": ("prompt", "completion"), "grpo": ("prompt",)}


def dataset_facts(report: DatasetReport) -> Table:
    profile, rule = report.profile, report.rule
    table = Table.grid(padding=(0, 2))
    table.add_row(Text("examples", style="bold"),
                  f"{profile.num_examples:,} ({FORMATS.get(profile.format, profile.format)}); "
                  f"{profile.total_tokens:,} tokens in all")
    counted = f"exact: {profile.tokenizer}" if profile.exact_tokens else \
        f"{profile.tokenizer}: the model's tokenizer is not on disk"
    table.add_row(Text("tokens", style="bold"),
                  f"mean {profile.mean_tokens:.0f}, p50 {profile.p50_tokens}, p90 {profile.p90_tokens}, "
                  f"p99 {profile.p99_tokens}, max {profile.max_tokens} ({counted})")
    if profile.images:
        table.add_row(Text("images", style="bold"),
                      f"{profile.images:,} in {profile.examples_with_images:,} examples (up to "
                      f"{profile.max_images_per_example} per example), {profile.image_min_size} to "
                      f"{profile.image_max_size}")
        table.add_row(Text("image tokens", style="bold"),
                      f"mean {profile.image_tokens_mean:.0f}, p99 {profile.image_tokens_p99}, max "
                      f"{profile.image_tokens_max} per example: {profile.image_token_share:.0%} of the mean length, "
                      f"counted in the token figures above (text alone: mean {profile.text_tokens_mean:.0f}, "
                      f"p99 {profile.text_tokens_p99}; {profile.image_tokens_rule})")
    if profile.task != "sft":
        _task_rows(table, profile)
    verdict = Text(f"{report.size} dataset", style="bold green" if report.size == "small" else "bold cyan")
    verdict.append(f": {report.why}", style="default")
    table.add_row(Text("verdict", style="bold"), verdict)
    table.add_row(Text("rule", style="bold"),
                  f"{rule.epochs} epochs, learning rate {rule.learning_rate:g}, LoRA rank {rule.lora_r}, "
                  f"length cap {rule.max_length} (Google's tuning guidance)")
    return table


def _task_rows(table: Table, profile: DatasetProfile) -> None:
    """What a preference or reward task reads: each part's lengths apart (TRL splits the response
    off where the prompt ends), KTO's labels, and how the rows were read when it was more than
    taking their columns."""
    parts = "; ".join(f"{part} p99 {getattr(profile, f'{part}_tokens_p99')}, max "
                      f"{getattr(profile, f'{part}_tokens_max')}" for part in PARTS[profile.task])
    table.add_row(Text("parts", style="bold"), f"{parts} (the tokens above: {WHOLE[profile.task]})")
    if profile.task == "kto":
        table.add_row(Text("labels", style="bold"),
                      f"{profile.desirable_rows:,} desirable, {profile.undesirable_rows:,} undesirable")
    if profile.note:
        table.add_row(Text("read as", style="bold"), profile.note)


class DatasetScreen(StepScreen):
    STEP = 3
    ERROR_PLACE = "#dataset-facts"
    ERROR_FIELD = "#dataset"
    HELP = HELP_SFT

    _last_read: tuple[str, str, str] | None = None    # the (dataset, model, task) last read, or tried

    def body(self) -> ComposeResult:
        with Horizontal(classes="form-row"):
            yield Label("Dataset", classes="field-label")
            yield Input(self.state.dataset_text, placeholder="empty: the bundled arithmetic examples",
                        id="dataset", compact=True)
        yield Static("Reading the dataset ...", id="dataset-facts", classes="detail")
        yield TokenHistogram(id="histogram")

    def on_mount(self) -> None:
        super().on_mount()
        self._timer: Timer | None = None
        self.query_one("#dataset", Input).focus()

    def on_screen_resume(self) -> None:
        """Read the dataset when the screen first shows or the model (its tokenizer) or the task
        changed; not again for a read that failed (its error is shown where the field is, and stays
        until the text changes and Enter or Next reads it)."""
        super().on_screen_resume()
        self._show_task()
        key = self._key()
        if self.state.dataset is not None and self.state.dataset_key == key:
            self._show(self.state.dataset)
        elif self._last_read != key:
            self.read_dataset(*key)
        else:  # that read failed: nothing of an older dataset stays in view
            self.query_one(TokenHistogram).show([])

    def _show_task(self) -> None:
        """The help and the placeholder say what an empty field reads for the task of step 1."""
        from llmwizard.wizard import core

        task = self.state.task_name
        help_text = HELP_SFT if task == "sft" else (
            f"{core.TASKS[task][0]} reads {READS[task]} from a .jsonl/.json/.csv/.parquet file or a Hugging Face "
            f"dataset; empty uses {core.default_dataset(task)}.")
        self.query_one(".help", Static).update(help_text)
        self.query_one("#dataset", Input).placeholder = f"empty: {BUNDLED[task]}"

    def _key(self) -> tuple[str, str, str]:
        model = self.state.model.name if self.state.model is not None else ""
        return self.query_one("#dataset", Input).value.strip(), model, self.state.task_name

    @work(thread=True, exclusive=True, exit_on_error=False, group="profile")
    def read_dataset(self, text: str, model_name: str, task: str, advance: bool = False) -> None:
        from llmwizard.wizard import core

        self._last_read = (text, model_name, task)
        assert self.state.model is not None, "the model step comes first"
        self.post_message(DatasetProfiled((text, model_name, task), core.profile_dataset(text, self.state.model, task),
                                          advance))

    @work(thread=True, exclusive=True, exit_on_error=False, group="complete")
    def complete(self, text: str) -> None:
        from llmwizard.wizard import core

        choices = [core.Choice(path, path) for path in core.dataset_choices(text, task=self.state.task_name)]
        self.post_message(Completions("dataset", text, choices))

    @on(Input.Changed, "#dataset")
    def typed(self, event: Input.Changed) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(0.2, lambda: self.complete(event.value))

    @on(Completions)
    def completions(self, message: Completions) -> None:
        if message.text == self.query_one("#dataset", Input).value:
            self.query_one("#dataset", Input).suggester = SuggestFromList(
                [choice.value for choice in message.choices], case_sensitive=False)

    @on(Input.Submitted, "#dataset")
    def submitted(self) -> None:
        self.query_one("#dataset-facts", Static).update(Text("Reading the dataset ...", style="dim"))
        self.query_one(TokenHistogram).show([])  # the old dataset's lengths are not this one's
        self.read_dataset(*self._key())

    def show_error(self, title: str, message: str, fix: str | None) -> None:
        """A dataset that cannot be read: its error where the facts were, and no histogram of the
        dataset read before."""
        super().show_error(title, message, fix)
        self.query_one(TokenHistogram).show([])

    @on(DatasetProfiled)
    def profiled(self, message: DatasetProfiled) -> None:
        if message.key != self._key():
            return  # the text changed since this was read
        self.state.dataset, self.state.dataset_key = message.report, message.key
        self.state.dataset_text = message.key[0]
        self._show(message.report)
        self.set_status("")
        if message.advance:
            self.wizard.goto(self.STEP + 1)

    def _show(self, report: DatasetReport) -> None:
        self.query_one("#dataset-facts", Static).update(dataset_facts(report))
        self.query_one(TokenHistogram).show(report.profile.histogram, report.rule.max_length)

    def action_next(self) -> None:
        if self.state.dataset is not None and self.state.dataset_key == self._key():
            self.wizard.goto(self.STEP + 1)
            return
        self.set_status("Reading the dataset ...", "warning")
        self.read_dataset(*self._key(), advance=True)
