"""Step 2: what this machine has (NVML, psutil, cgroup), or hardware you plan for instead."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.validation import Integer
from textual.widgets import Input, Label, RadioButton, RadioSet, Static

from llmwizard.wizard.messages import HardwareDetected, HardwareResolved
from llmwizard.wizard.screens.base import StepScreen, error_parts, error_text

if TYPE_CHECKING:
    from llmwizard.autotune.machine.hardware import HardwareProfile

GiB = 1024**3


def gpu_table(hardware: HardwareProfile) -> Table:
    """GPUs in four columns, narrow enough for 80 columns (`llmwizard detect` shows more)."""
    table = Table(box=None, padding=(0, 2), show_header=True, header_style="bold")
    table.add_column("GPU", no_wrap=True)
    table.add_column("free / total", justify="right", no_wrap=True)
    table.add_column("compute", justify="center", no_wrap=True)
    table.add_column("bf16 TFLOP/s", justify="right", no_wrap=True)
    for gpu in hardware.gpus:
        busy = gpu.total_memory - gpu.free_memory > max(GiB, gpu.total_memory // 20)
        table.add_row(f"{gpu.index}  {gpu.name}",
                      Text(f"{gpu.free_memory / GiB:.1f} / {gpu.total_memory / GiB:.1f} GiB",
                           style="yellow" if busy else ""),
                      f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}",
                      "?" if gpu.bf16_tflops is None else f"{gpu.bf16_tflops:g}")
    return table


def hardware_view(hardware: HardwareProfile) -> Group:
    """GPUs, links and host: the interconnect and host parts as `llmwizard detect` prints them."""
    from llmwizard.wizard.detect_view import host_table, interconnect_view

    parts: list[RenderableType] = []
    if hardware.gpus:
        parts += [gpu_table(hardware), interconnect_view(hardware)]
    else:
        parts.append(Text(f"No GPU found: plans train on the CPU ({hardware.cpu_cores} cores).", style="bold"))
    parts.append(host_table(hardware))
    parts += [Text(f"! {note}", style="yellow") for note in hardware.notes]
    return Group(*parts)


class Choice(RadioButton):
    """A radio button that reads without colour: a filled dot when chosen, a ring when not."""

    @property
    def BUTTON_INNER(self) -> str:  # type: ignore[override]  # noqa: N802
        return "●" if self.value else "○"


class SpecInput(Input):
    """The GPUs field. While it is off (planning for this machine) a click on it is still heard, so
    the screen can say how to turn it on."""

    def check_message_enabled(self, message: Message) -> bool:
        if isinstance(message, events.MouseDown) and self.disabled:
            return True
        return super().check_message_enabled(message)

    def on_mouse_down(self, event: events.MouseDown) -> None:
        if self.disabled:  # only the hint: no selection drag, which would capture the mouse
            event.prevent_default()
            event.stop()
            self.screen.spec_off_clicked()  # type: ignore[attr-defined]


class NodesInput(Input):
    """The nodes field. Letters typed here were meant for the GPUs field: the typing is undone here,
    and what was typed since the field took the focus goes to the GPUs field (with Other hardware
    chosen; keys typed ahead before the focus moves follow it), or the screen says how to describe
    other hardware."""

    typed_from = "1"
    typed = ""              # printable keys since the focus came here
    redirecting = False     # a letter was typed: every key goes to the GPUs field until the focus leaves

    def _on_focus(self, event: events.Focus) -> None:
        self.typed_from, self.typed, self.redirecting = self.value, "", False
        super()._on_focus(event)

    async def _on_key(self, event: events.Key) -> None:
        character = event.character if event.is_printable and event.character else ""
        if character and (self.redirecting or not character.isdigit()):
            event.prevent_default()
            event.stop()
            carried = "" if self.redirecting else self.typed
            self.value = self.typed_from
            self.redirecting = True
            self.screen.nodes_typed_letters(carried + character)  # type: ignore[attr-defined]
            return
        self.typed += character
        await super()._on_key(event)

    def _on_blur(self, event: events.Blur) -> None:
        self.redirecting = False
        super()._on_blur(event)


HELP_THIS = ("Plan for this machine or for Other hardware (exported to start there). ←→ choose, Space picks; "
             "Other hardware puts the cursor in its GPUs field.")
HELP_OTHER = ("Other hardware: type the GPUs, e.g. 4xRTX4090 (the cursor is in the GPUs field); Tab moves to "
              "nodes.")


class HardwareScreen(StepScreen):
    STEP = 1
    HELP = HELP_THIS
    ERROR_PLACE = "#spec-result"
    ERROR_FIELD = "#spec"

    def body(self) -> ComposeResult:
        with VerticalScroll(id="detected-box"):
            yield Static("Detecting GPUs ...", id="detected")
        with RadioSet(id="target"):
            yield Choice("This machine", id="this", value=not self.state.other_hardware)
            yield Choice("Other hardware", id="other", value=self.state.other_hardware)
        with Horizontal(id="spec-row", classes="form-row"):
            yield Label("GPUs", id="spec-label", classes="field-label")
            yield SpecInput(self.state.gpu_spec, placeholder="4xRTX4090, 8xH100-80GB, 2x24GB, cpu", id="spec",
                            compact=True, select_on_focus=False)  # typing coming back here continues the text
            yield Label("nodes", classes="field-label")
            yield NodesInput(str(self.state.nodes), id="nodes", classes="num", compact=True, type="integer",
                        validators=[Integer(minimum=1, maximum=4096)])
        yield Static(id="spec-result", classes="detail")

    def on_mount(self) -> None:
        super().on_mount()
        from llmwizard.wizard import core

        self.query_one("#spec", Input).suggester = SuggestFromList(core.gpu_spec_examples(), case_sensitive=False)
        self._show_target()
        # The keys the help names work at once: on the choice, or in the GPUs field when it is chosen.
        self.query_one("#spec" if self.state.other_hardware else "#target").focus()
        if self.state.detected is None:
            self.detect()
        else:
            self._show_detected(self.state.detected)
        if self.state.other_hardware and self.state.gpu_spec:
            self.resolve(self.state.gpu_spec, self.state.nodes)

    @work(thread=True, exclusive=True, exit_on_error=False, group="detect")
    def detect(self) -> None:
        from llmwizard.wizard import core

        self.post_message(HardwareDetected(core.detect_hardware(self.state.output_dir)))

    @work(thread=True, exclusive=True, exit_on_error=False, group="spec")
    def resolve(self, spec: str, nodes: int, advance: bool = False) -> None:
        """Parse the spec; while typing an error is shown inline, on Next it raises (a modal)."""
        from llmwizard.autotune.errors import UserError
        from llmwizard.wizard import core

        try:
            hardware = core.hardware_from_spec(spec, nodes, getattr(self.state.args, "host_ram", None))
        except UserError as error:
            if advance:
                raise
            self.post_message(HardwareResolved(spec, None, error))
            return
        self.post_message(HardwareResolved(spec, hardware, None, advance))

    @on(HardwareDetected)
    def detected(self, message: HardwareDetected) -> None:
        self.state.detected = message.hardware
        self._show_detected(message.hardware)
        if self.wizard.state.reached == self.STEP:
            self.set_status("")

    def _show_detected(self, hardware: HardwareProfile) -> None:
        self.query_one("#detected", Static).update(hardware_view(hardware))

    @on(RadioSet.Changed, "#target")
    def target_changed(self, event: RadioSet.Changed) -> None:
        self.state.other_hardware = event.pressed.id == "other"
        self._show_target()
        if self.state.other_hardware:
            self.query_one("#spec", Input).focus()

    OFF_HINT = "For other GPUs, pick Other hardware above first."

    def help_agrees(self) -> None:
        """The help line says where the cursor is and where Tab goes, for the choice made."""
        self.query_one(".help", Static).update(HELP_OTHER if self.state.other_hardware else HELP_THIS)

    def spec_off_clicked(self) -> None:
        """A click on the GPUs field while it is off says how to turn it on."""
        self.query_one("#target", RadioSet).focus()
        self.set_status(self.OFF_HINT, "warning")

    def nodes_typed_letters(self, typed: str) -> None:
        """Letters typed in nodes were meant for the GPUs field: with Other hardware chosen they go
        there (and the cursor with them), else the choice takes the focus and the status says why."""
        self.set_status("nodes is a whole number. " + (self.OFF_HINT if not self.state.other_hardware
                                                       else "What you type goes to the GPUs field."), "warning")
        if self.state.other_hardware:
            spec = self.query_one("#spec", Input)
            spec.focus()
            spec.cursor_position = len(spec.value)  # after what is there: the letters continue it
            spec.insert_text_at_cursor(typed)
        else:
            self.query_one("#target").focus()

    def _show_target(self) -> None:
        other = self.state.other_hardware
        self.help_agrees()
        self.query_one("#spec", Input).disabled = not other
        self.query_one("#spec-label").set_class(not other, "-off")
        if other:
            self._changed()
        else:
            self.query_one("#spec-result", Static).update(
                Text("Plan for the devices above." + (f" {self.state.nodes} nodes like this one."
                                                      if self.state.nodes > 1 else "")))

    @on(Input.Changed, "#spec")
    def _spec_typed(self) -> None:
        self.set_status("")  # a hint about letters typed in the nodes field is answered

    def _nodes_problem(self) -> str | None:
        """What is wrong with the nodes field, or None."""
        nodes = self.query_one("#nodes", Input)
        if nodes.is_valid:
            return None
        return f"nodes: '{nodes.value}' is not allowed; use a whole number, 1 or more."

    @on(Input.Changed, "#spec, #nodes")
    def _changed(self) -> None:
        """Check both fields as they are typed: a bad nodes value does not hide what the GPUs field
        says (each problem is named)."""
        spec = self.query_one("#spec", Input).value.strip()
        problem = self._nodes_problem()
        if problem is None:
            self.state.nodes = int(self.query_one("#nodes", Input).value or 1)
        self.state.gpu_spec = spec
        if self.state.other_hardware and spec:
            self.resolve(spec, self.state.nodes)
        elif problem is not None:
            self.query_one("#spec-result", Static).update(Text(problem, style="red"))
        elif self.state.other_hardware:
            self.query_one("#spec-result", Static).update(Text("Describe the GPUs, e.g. 4xRTX4090.", style="dim"))
        else:
            self._show_target()

    @on(HardwareResolved)
    def resolved(self, message: HardwareResolved) -> None:
        result = self.query_one("#spec-result", Static)
        if message.spec != self.state.gpu_spec and not message.advance:
            return  # an older keystroke
        self.spec_error = message.error
        problem = self._nodes_problem()
        shown = Text(problem + "\n", style="red") if problem else Text()
        if message.hardware is None:
            assert message.error is not None
            _, text, fix = error_parts(message.error)
            result.update(shown + error_text(f"GPUs: {text}", fix))
            return
        result.update(shown + Text("Plan for: " + message.hardware.describe(), style="green"))
        if message.advance:
            self.state.hardware = message.hardware
            self.wizard.goto(self.STEP + 1)

    spec_error: object | None = None   # the GPUs field's last error as typed, or None

    def action_next(self) -> None:
        if self._nodes_problem() is not None:
            bad = ["nodes"] + (["GPUs"] if self.state.other_hardware and self.spec_error is not None else [])
            self.query_one("#nodes", Input).focus()
            self.set_status(f"Fix {' and '.join(bad)}: the message above says what each allows.", "error")
            self._changed()
            return
        if self.state.other_hardware:
            spec = self.query_one("#spec", Input).value.strip()
            if not spec:
                self.query_one("#spec", Input).focus()
                self.set_status("Describe the GPUs first, e.g. 4xRTX4090.", "warning")
                return
            self.resolve(spec, self.state.nodes, advance=True)
            return
        if self.state.detected is None:
            self.set_status("Still detecting ...", "warning")
            return
        from llmwizard.wizard import core

        self.state.hardware = core.with_nodes(self.state.detected, self.state.nodes)
        self.wizard.goto(self.STEP + 1)
