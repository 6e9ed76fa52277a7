"""Import boundaries: the core stays light and never reaches for a face."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Modules the CLI imports on its way to a printed plan, or the parent process while it watches a run.
LIGHT = ["autotune.dataset", "autotune.embedded", "autotune.goals", "autotune.hardware", "autotune.nvml", "autotune.host", "autotune.gpu_catalog", "autotune.memory",
         "autotune.model_spec", "autotune.param_counts", "autotune.plan", "autotune.planner", "autotune.search", "autotune.rules", "autotune.throughput",
         "autotune.tokens", "presets", "runner.export", "runner.configs", "runner.scripts", "runner.diagnostics", "runner.plot", "runner.recovery", "runner.launch", "runner.metrics", "runner.live",
         "runner.session", "wizard.cli", "wizard.report", "wizard.detect_view"]


@pytest.mark.parametrize("module", LIGHT)
def test_module_imports_no_torch_and_no_textual(module):
    code = (f"import sys, {module}\n"
            "print([m for m in ('torch', 'transformers', 'textual', 'deepspeed', 'trl', 'peft') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
def test_import_contracts():
    out = subprocess.run(["lint-imports"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_no_undefined_names_or_unused_imports():
    """Pyflakes-level errors (an undefined name on a rarely run path, a dead import) fail here."""
    out = subprocess.run(["ruff", "check", "--select", "F,E9", "autotune", "runner", "wizard", "presets", "tests",
                          "bench"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
