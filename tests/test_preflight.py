"""Before a launch: a catalog or hub model's weights must be cached or fetchable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmwizard.autotune.errors import UserError
from llmwizard.runner.preflight import check_model_weights
from tests.conftest import ROOT


def test_local_and_embedded_models_need_no_check():
    assert check_model_weights("embedded:tiny-llama", "embedded") is None
    assert check_model_weights("/models/mine", "local") is None


def test_offline_without_cached_weights_names_the_model_and_both_fixes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as caught:
        check_model_weights("meta-llama/Llama-3.2-1B", "catalog")
    text = str(caught.value)
    assert "meta-llama/Llama-3.2-1B" in text and "HF_HUB_OFFLINE" in text
    assert "hf download meta-llama/Llama-3.2-1B" in text and "--model /path/to/Llama-3.2-1B" in text


def test_unreachable_hub_is_said_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with pytest.raises(UserError) as caught:
        check_model_weights("someorg/some-model", "hub")
    assert "cannot be reached" in str(caught.value) or "no such model" in str(caught.value)


def test_cached_weights_pass(tmp_path: Path):
    """A snapshot in the Hugging Face cache layout (refs/main -> snapshots/REV/model.safetensors)."""
    repo = tmp_path / "hub" / "models--someorg--cached-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    code = ("from llmwizard.runner.preflight import check_model_weights\n"
            "print(check_model_weights('someorg/cached-model', 'hub'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
                              "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "found in the local Hugging Face cache" in out.stdout


def test_headless_run_of_an_uncached_catalog_model_stops_before_launching(tmp_path: Path):
    """`--yes --model llama-3.2-1b` offline: exit 2 with the fix before any rank starts; the exported
    run directory stays, so `llmwizard run DIR` works once the weights are there."""
    from tests.conftest import run_cli

    result = run_cli("--yes", "--model", "llama-3.2-1b", "--max-steps", "1", "--output-dir", str(tmp_path / "runs"),
                     cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "hf download meta-llama/Llama-3.2-1B" in result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "plan.yaml").is_file() and not (run_dir / "train.log").exists()
