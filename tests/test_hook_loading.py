"""Test hooks reach the ranks from the tests alone (tests/hooks/site/sitecustomize.py).

The real runs that use the hooks are in test_oom.py, test_disk.py and test_after_run.py; these
tests check the loading itself in a fresh interpreter, as a rank starts: nothing happens without a
hook named, the hook's callbacks end the list `default_callbacks` gives with one, and no package
of the project carries test code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.hooks.site.sitecustomize import TEST_CALLBACKS_ENV, hook_environment

PACKAGES = ("autotune", "runner", "wizard", "presets")


def python(code: str, env: dict[str, str], cwd: Path) -> dict:
    """Run `code` in a fresh interpreter (the test's environment plus `env`); it prints one JSON object."""
    base = {key: value for key, value in os.environ.items() if key != TEST_CALLBACKS_ENV}
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300,
                          env={**base, **env}, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_package_of_the_project_names_a_test_hook():
    named = [f"{path.relative_to(ROOT)}:{number}"
             for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if TEST_CALLBACKS_ENV in line or "tests.hooks" in line]
    assert named == []


def test_an_interpreter_without_a_hook_named_only_reads_the_variable(tmp_path):
    site = hook_environment(Path(__file__))["PYTHONPATH"]
    seen = python("import json, sys, sitecustomize\n"
                  "heavy = ('llmwizard', 'torch', 'transformers')\n"
                  "print(json.dumps({'site': sitecustomize.__file__, "
                  "'finders': [type(f).__name__ for f in sys.meta_path], "
                  "'loaded': sorted(m for m in sys.modules if m.split('.')[0] in heavy)}))",
                  {"PYTHONPATH": site}, tmp_path)
    assert Path(seen["site"]).parent == ROOT / "tests" / "hooks" / "site"
    assert "CallbacksModuleFinder" not in seen["finders"]
    assert seen["loaded"] == []


def test_a_named_hook_ends_the_default_callbacks_of_every_rank(tmp_path):
    hook = tmp_path / "hook.py"
    hook.write_text("class Marker:\n    pass\n\n\ndef callbacks():\n    return [Marker()]\n")
    code = ("import json, sys\n"
            "before = [type(f).__name__ for f in sys.meta_path]\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'llmwizard') if m in sys.modules)\n"
            "from llmwizard.runner.rank.callbacks import default_callbacks\n"
            f"names = [type(c).__name__ for c in default_callbacks({str(tmp_path / 'metrics.jsonl')!r})]\n"
            "after = [type(f).__name__ for f in sys.meta_path]\n"
            "print(json.dumps({'before': before, 'heavy': heavy, 'names': names, 'after': after}))")
    seen = python(code, hook_environment(hook), tmp_path)
    assert seen["before"][0] == "CallbacksModuleFinder"
    assert seen["heavy"] == []  # nothing loaded at start-up, the hook neither
    assert seen["names"][-1] == "Marker"
    assert seen["names"][:-1] == ["MetricsCallback", "RankSyncCallback", "StopOnSignalCallback",
                                  "DivergenceCallback", "SameBestCheckpointCallback"]
    assert "CallbacksModuleFinder" not in seen["after"]  # the finder takes itself off once it has served
