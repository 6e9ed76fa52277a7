"""bench/gpu_check.py, kept working while no GPU is lent: its --dry-run runs the real code path on
the CPU (a model directory from a catalog config, the planner, the exporter, the probe's real launch,
the results table, the calibration store), every case of the GPU matrix plans on a described
H100, and bad arguments are refused by name."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from llmwizard.autotune.machine.hardware import from_spec
from tests.conftest import ROOT
from tests.refusals import assert_refused

SCRIPT = ROOT / "bench" / "gpu_check.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # (its dataclasses look their module up by name)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env=dict(os.environ, **(env or {})), stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """One dry run for the module: (its process, the results folder, the calibration folder)."""
    tmp = tmp_path_factory.mktemp("gpu-check")
    calibration = tmp / "calibration"
    result = _run("--dry-run", "--out-dir", str(tmp / "out"), "--work", str(tmp / "work"),
                  env={"LLMWIZARD_CALIBRATION_DIR": str(calibration)})
    return result, tmp / "out", calibration


def test_the_dry_run_probes_each_case_and_writes_estimate_and_measurement(dry_run):
    result, out, _ = dry_run
    assert result.returncode == 0, result.stdout + result.stderr
    table = (out / "gpu_check-cpu-dry-run.txt").read_text()
    rows = [line for line in table.splitlines() if line and not line.startswith("#") and not line.startswith("case")]
    assert len(rows) == len(_bench().dry_matrix()), table
    for row in rows:
        fields = row.split()
        numbers = fields[fields.index("b2") + 1:][:8]  # expected, tensor, alloc, reserved, process, ratio, step, secs
        expected, process, ratio, step = float(numbers[0]), float(numbers[4]), float(numbers[5]), float(numbers[6])
        assert expected > 0 and process > 0 and step > 0, row        # a real launch measured it
        assert 0.3 < ratio < 3, row                                   # measured / expected, on the CPU: RSS
        assert any(verdict in row for verdict in ("keep:", "shrink:", "grow:")), row


def test_the_dry_run_feeds_the_calibration_store(dry_run):
    result, _, calibration = dry_run
    assert result.returncode == 0, result.stderr
    store = json.loads((calibration / "calibration.json").read_text())
    entry = store["entries"]["cpu|llama|full|single"]
    assert entry["memory"] and entry["speed"]


def test_every_gpu_case_plans_on_one_h100_as_pinned(tmp_path: Path):
    """The matrix cannot rot on the CPU side: each case's model directory loads, the planner takes
    its pinned settings on one 80 GB H100 and the plan fits, with the case's optimizer and length."""
    bench = _bench()
    for case in bench.gpu_matrix():
        directory = bench.model_dir(case, tmp_path, dry_run=False)
        plan, _ = bench.plan_case(case, directory, from_spec("1xH100-80GB"))
        assert plan.strategy == "single" and plan.num_processes == 1, case.name
        assert plan.max_length == case.seq and plan.micro_batch == case.micro_batch, case.name
        assert plan.optimizer == case.goals.get("optimizer", "adamw"), case.name
        assert plan.estimate.total < plan.estimate.budget, case.name
    assert {c.method for c in bench.gpu_matrix()} == {"full", "lora", "qlora"}
    assert any("moe" in json.loads((bench.model_dir(c, tmp_path, False) / "config.json").read_text())["model_type"]
               for c in bench.gpu_matrix())


def test_the_preparation_names_every_wheel_the_gpu_machine_lacks():
    doc = _bench().__doc__
    for package in ("trl==", "datasets==", "bitsandbytes==", "torchao==", "lomo-optim==", "galore-torch==",
                    "apollo-torch==", "pydantic==", "pydantic-core==", "dill==", "multiprocess=="):
        assert package in doc, package
    shell = (ROOT / "bench" / "gpu_check.sh").read_text()
    assert "--target /tmp/site .whl/*.whl" in shell and "bench/gpu_check.py" in shell and "$OUT" in shell
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")]).returncode == 0


@pytest.mark.parametrize(("args", "words"), [
    (["--budget-s", "nan"], ["--budget-s", "nan", "above 0"]),
    (["--budget-s", "0"], ["--budget-s", "0", "above 0"]),
    (["--budget-s", "-60"], ["--budget-s", "-60", "above 0"]),
    (["--budget-s", "soon"], ["--budget-s", "soon", "not a number"]),
    (["--dry-run", "--only", "no-such-case"], ["--only", "no-such-case", "matches no case", "llama-3.2-1b"]),
    (["--out-dir", "bench/gpu_check.py"], ["--out-dir", "bench/gpu_check.py", "is a file"]),
    (["--work", "pyproject.toml"], ["--work", "pyproject.toml", "is a file"]),
])
def test_bad_arguments_are_refused_by_name(args: list[str], words: list[str]):
    assert_refused(_run(*args), words)
