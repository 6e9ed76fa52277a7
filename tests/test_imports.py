"""Import boundaries: the core stays light and never reaches for a face."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pathlib import Path

from tests.conftest import ROOT

# Every module of the core, the runner and the headless faces: what the CLI imports on its way to a
# printed plan, or the parent process while it watches a run. Only the per-rank training entry and
# the Textual app may import the heavy libraries. Listed from the folders, so a new module is covered.
HEAVY = {"llmwizard.runner.rank.callbacks", "llmwizard.runner.rank.train", "llmwizard.wizard.app",
         "llmwizard.wizard.messages", "llmwizard.wizard.__main__"}
def _module(path: Path) -> str:
    """The import name of a file under the repository: autotune/plan/search.py -> llmwizard.autotune.plan.search."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return "llmwizard." + ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


LIGHT = sorted(
    ({_module(path) for folder in ("autotune", "runner") for path in (ROOT / folder).rglob("*.py")}
     | {_module(path) for path in (ROOT / "wizard").glob("*.py") if path.stem != "__init__"})
    - {"llmwizard.autotune", "llmwizard.runner"} - HEAVY
) + ["llmwizard.presets"]


@pytest.mark.parametrize("module", LIGHT)
def test_module_imports_no_torch_and_no_textual(module):
    code = (f"import sys, {module}\n"
            "print([m for m in ('torch', 'transformers', 'textual', 'deepspeed', 'trl', 'peft') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_import_contracts(installed_layout: Path):
    """import-linter over the llmwizard namespace as it installs (see `installed_layout`)."""
    out = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--config", str(ROOT / "pyproject.toml")],
                         capture_output=True, text=True, cwd=installed_layout,
                         env=dict(os.environ, PYTHONPATH=str(installed_layout)))
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_undefined_names_unused_imports_or_bare_package_names():
    """Pyflakes-level errors (an undefined name on a rarely run path, a dead import) fail here, and so
    does a bare `import runner`: it would work only with the repository root on sys.path."""
    out = subprocess.run([str(Path(sys.executable).with_name("ruff")), "check", "--select", "F,E9,TID251", "autotune", "runner", "wizard", "presets", "tests",
                          "bench"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_wheel_installs_only_the_llmwizard_namespace(tmp_path: Path):
    """The four folders install under llmwizard/; nothing generic lands top-level in site-packages."""
    import shutil
    import zipfile

    source = tmp_path / "source"  # a copy, so the build leaves nothing in the repository
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("autotune", "runner", "wizard", "presets"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(source)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = tmp_path.glob("llmwizard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"llmwizard"}
    for package in ("autotune", "runner", "wizard", "presets"):
        assert f"llmwizard/{package}/__init__.py" in names
    assert "llmwizard/autotune/embedded/data/arithmetic.jsonl" in names
    assert "llmwizard/presets/small-dataset.yaml" in names
    assert "llmwizard/wizard/app.tcss" in names
