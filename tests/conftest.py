"""Shared test setup: an isolated cache and no network to model hubs."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Set before any test imports autotune, and inherited by every subprocess the tests start.
os.environ.setdefault("LLMWIZARD_CACHE", tempfile.mkdtemp(prefix="llmwizard-test-cache-"))
# The user's own presets (~/.config/llmwizard/presets) must not change what tests list.
os.environ["LLMWIZARD_CONFIG_DIR"] = tempfile.mkdtemp(prefix="llmwizard-test-config-")
# The calibration store (llmwizard.autotune.machine.calibration): never the user's; tests that write it
# point it at their own directory.
os.environ["LLMWIZARD_CALIBRATION_DIR"] = tempfile.mkdtemp(prefix="llmwizard-test-calibration-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# The hardware is pinned to the CPU: detection (NVML maps CUDA_VISIBLE_DEVICES), the planner and every
# launched rank then see no GPU, so a developer's GPU machine gives the results CPU CI gives. Tests of
# GPU planning fake the NVML boundary or pass a hardware spec (`--gpus 4xRTX4090`).
os.environ["CUDA_VISIBLE_DEVICES"] = ""

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real `llmwizard` command in a subprocess."""
    full_env = {**os.environ, "COLUMNS": "120", **(env or {})}
    return subprocess.run([sys.executable, "-m", "llmwizard.wizard.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def installed_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding llmwizard/{autotune,runner,wizard,presets} as links to the repository's folders:
    the layout a wheel installs. Static tools (import-linter, mypy) read the namespace from here, since
    they do not follow the editable install's import hook."""
    root = tmp_path_factory.mktemp("layout")
    (root / "llmwizard").mkdir()
    for package in ("autotune", "runner", "wizard", "presets"):
        (root / "llmwizard" / package).symlink_to(ROOT / package, target_is_directory=True)
    return root


@pytest.fixture()
def write_jsonl(tmp_path: Path):
    def write(rows: list[dict], name: str = "data.jsonl") -> Path:
        import json

        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    return write
