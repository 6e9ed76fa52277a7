"""Test hook: the rank sends itself SIGTERM at the end of step STOP_AT_STEP_ENV (default 2), as
`llmwizard stop` or a cancelled job would, so a short CPU run takes the real stop path (a
checkpoint saved at that step, an `end` record with reason "stopped").

llmwizard.runner.train loads this file when LLMWIZARD_TEST_CALLBACKS names it (see `environment`);
real runs never import it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

STOP_AT_STEP_ENV = "LLMWIZARD_TEST_STOP_AT_STEP"


def environment(at_step: int) -> dict[str, str]:
    from llmwizard.runner.train import TEST_CALLBACKS_ENV

    return {TEST_CALLBACKS_ENV: str(Path(__file__).resolve()), STOP_AT_STEP_ENV: str(at_step)}


class SignalAtStepCallback(TrainerCallback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step
        self.sent = False

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Sent at the start of the step: the stop callbacks act on it at this step's end.
        if not self.sent and state.global_step + 1 >= self.at_step:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


def callbacks() -> list[TrainerCallback]:
    return [SignalAtStepCallback(int(os.environ.get(STOP_AT_STEP_ENV, "2")))]
