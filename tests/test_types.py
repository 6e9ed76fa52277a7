"""mypy over the llmwizard namespace as it installs: no errors at default strictness."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_mypy_finds_no_errors(installed_layout: Path, tmp_path: Path):
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                          "--cache-dir", str(tmp_path / "mypy-cache"), "-p", "llmwizard"],
                         capture_output=True, text=True, cwd=installed_layout,
                         env=dict(os.environ, MYPYPATH=str(installed_layout)))
    assert out.returncode == 0, out.stdout + out.stderr
