"""Test hook: the rank sends itself SIGTERM at the end of step STOP_AT_STEP_ENV (default 2), as
`llmwizard stop` or a cancelled job would, so a short CPU run takes the real stop path (a
checkpoint saved at that step, an `end` record with reason "stopped").

Every rank of a run whose environment has `environment(...)` loads this file
(tests/hooks/site/sitecustomize.py); real runs never import it.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from transformers import TrainerCallback

STOP_AT_STEP_ENV = "LLMWIZARD_TEST_STOP_AT_STEP"


def environment(at_step: int) -> dict[str, str]:
    # (imported here: the ranks load this file by its path, without the tests package)
    from tests.hooks.site.sitecustomize import hook_environment

    return {**hook_environment(__file__), STOP_AT_STEP_ENV: str(at_step)}


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
