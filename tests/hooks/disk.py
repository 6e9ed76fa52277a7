"""Test hook: a disk that is nearly full from step K on, faked where the rank asks the OS.

Every rank of a run whose environment has `environment(...)` loads this file
(tests/hooks/site/sitecustomize.py); real runs never import it. It replaces `shutil.disk_usage`
in the rank: from optimizer step FULL_FROM_STEP_ENV on, the filesystem reports FREE_BYTES_ENV bytes
free (the real total and used otherwise). RANK_ENV limits that to one rank, as when one node's
disk is full: the other ranks must still skip the save with it. Each call is appended to CALLS_FILE_ENV as
"rank step path", so a test can see how often a rank looked.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

FULL_FROM_STEP_ENV = "LLMWIZARD_TEST_DISK_FULL_FROM_STEP"
FREE_BYTES_ENV = "LLMWIZARD_TEST_DISK_FREE_BYTES"
CALLS_FILE_ENV = "LLMWIZARD_TEST_DISK_CALLS_FILE"
RANK_ENV = "LLMWIZARD_TEST_DISK_FULL_RANK"


def environment(from_step: int, calls_file: Path, free_bytes: int = 2**20, rank: int | None = None) -> dict[str, str]:
    """What a test adds to a run's environment. The ranks run with cwd = the run directory, so the
    hook and the calls file are named by absolute paths."""
    # (imported here: the ranks load this file by its path, without the tests package)
    from tests.hooks.site.sitecustomize import hook_environment

    return {**hook_environment(__file__), FULL_FROM_STEP_ENV: str(from_step),
            FREE_BYTES_ENV: str(free_bytes), CALLS_FILE_ENV: str(calls_file.resolve()),
            **({RANK_ENV: str(rank)} if rank is not None else {})}


class NearlyFullDiskCallback(TrainerCallback):
    """Tracks the step in progress; the patched disk_usage reads it."""

    def __init__(self, from_step: int, free_bytes: int, calls_file: str) -> None:
        self.step = 0
        real = shutil.disk_usage
        rank = os.environ.get("RANK", "0")
        full_here = os.environ.get(RANK_ENV, rank) == rank

        def disk_usage(path: Any) -> Any:
            usage = real(path)
            with open(calls_file, "a", encoding="utf-8") as f:
                f.write(f"{rank} {self.step} {path}\n")
            return usage._replace(free=min(free_bytes, usage.free)) if full_here and self.step >= from_step else usage

        shutil.disk_usage = disk_usage  # type: ignore[assignment]

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step = state.global_step + 1


def callbacks() -> list[TrainerCallback]:
    return [NearlyFullDiskCallback(int(os.environ[FULL_FROM_STEP_ENV]), int(os.environ[FREE_BYTES_ENV]),
                                   os.environ[CALLS_FILE_ENV])]
