"""Test hook: a CUDA out-of-memory error on demand, so a CPU run takes the whole recovery path.

Every rank of a run whose environment has `environment(...)` loads this file
(tests/hooks/site/sitecustomize.py); real runs never import it. Every rank raises
torch.OutOfMemoryError at the start of step OOM_AT_STEP_ENV (default 3) while
per_device_train_batch_size is above OOM_ABOVE_ENV, which is what a rank does when a micro-batch
does not fit.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback

OOM_ABOVE_ENV = "LLMWIZARD_TEST_OOM_WHEN_MICRO_BATCH_ABOVE"
OOM_AT_STEP_ENV = "LLMWIZARD_TEST_OOM_AT_STEP"


def environment(above: int, at_step: int) -> dict[str, str]:
    """What a test adds to a run's environment. The ranks run with cwd = the run directory, so the
    hook is named by its absolute path."""
    # (imported here: the ranks load this file by its path, without the tests package)
    from tests.hooks.site.sitecustomize import hook_environment

    return {**hook_environment(__file__), OOM_ABOVE_ENV: str(above),
            OOM_AT_STEP_ENV: str(at_step)}


class InjectedOutOfMemoryCallback(TrainerCallback):
    def __init__(self, above: int, at_step: int) -> None:
        self.above = above
        self.at_step = at_step

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        micro = args.per_device_train_batch_size
        if micro > self.above and state.global_step + 1 >= self.at_step:
            import torch

            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB. (llmwizard test hook: micro-batch {micro} "
                f"> {self.above} at step {state.global_step + 1})")


def callbacks() -> list[TrainerCallback]:
    return [InjectedOutOfMemoryCallback(int(os.environ[OOM_ABOVE_ENV]), int(os.environ.get(OOM_AT_STEP_ENV, "3")))]
