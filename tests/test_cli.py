"""The CLI's surface: fast help, light imports, JSON shapes and clean failures on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import run_cli


def test_help_imports_nothing_heavy():
    code = ("import sys\nfrom llmwizard.wizard.cli import build_parser\nbuild_parser().format_help()\n"
            "heavy = [m for m in ('torch', 'transformers', 'textual', 'trl', 'deepspeed') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plan_path_imports_no_torch(tmp_path):
    code = ("import sys, io, contextlib\nfrom llmwizard.wizard.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['plan', '--json'])\n"
            "print([m for m in ('torch', 'transformers', 'textual') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_plan_json_has_the_stable_keys():
    result = run_cli("plan", "--json", "--preset", "small-dataset")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("strategy", "offload", "launcher", "num_machines", "num_processes", "method", "precision",
                "micro_batch", "grad_accum", "effective_batch", "activation_checkpointing", "max_length",
                "epochs", "learning_rate", "lora", "trainable_params", "total_params", "estimate", "reasons"):
        assert key in data
    assert data["micro_batch"] * data["grad_accum"] * data["num_processes"] == data["effective_batch"]
    assert set(data["estimate"]["per_gpu"]) == {"params", "grads", "optimizer", "activations", "logits",
                                                "overhead", "total"}
    # the embedded random-init model: full fine-tuning, three times the preset's 20 epochs
    assert data["method"] == "full" and data["lora"] is None and data["epochs"] == 60


def _assert_clean_failure(result, *needles):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stderr


def test_unknown_preset(tmp_path):
    _assert_clean_failure(run_cli("--preset", "nope", "--yes", cwd=tmp_path), "Unknown preset 'nope'", "small-dataset")


def test_missing_dataset(tmp_path):
    _assert_clean_failure(run_cli("--preset", "small-dataset", "--yes", "--dataset", "missing.jsonl", cwd=tmp_path),
                          "missing.jsonl", "Fix")


def test_rows_without_text(tmp_path, write_jsonl):
    path = write_jsonl([{"input": "a", "label": 1}])
    _assert_clean_failure(run_cli("--preset", "small-dataset", "--yes", "--dataset", str(path), cwd=tmp_path),
                          "no usable field", "messages")


def test_unwritable_output_dir(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/llmwizard-runs"  # not writable even for root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "runs")
    _assert_clean_failure(run_cli("--preset", "small-dataset", "--yes", "--output-dir", target, cwd=tmp_path),
                          "Output directory")


def test_unknown_model(tmp_path):
    _assert_clean_failure(run_cli("plan", "--model", "no/such-model", cwd=tmp_path), "no/such-model")


def test_corrupt_plan_file(tmp_path):
    (tmp_path / "plan.yaml").write_text("::: not a plan\n")
    _assert_clean_failure(run_cli("run", str(tmp_path), cwd=tmp_path), "plan.yaml")


def test_max_length_beyond_the_model(tmp_path):
    _assert_clean_failure(run_cli("plan", "--max-length", "4096", cwd=tmp_path), "512", "--max-length")


@pytest.mark.parametrize("argv", [["presets"], ["detect"], ["detect", "--json"]])
def test_small_commands_work(argv):
    result = run_cli(*argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
