from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmwizard.autotune import embedded
from tests.conftest import run_cli


def test_bundled_dataset_is_what_the_generator_makes():
    assert embedded.DATASET_PATH.read_text() == embedded.dataset_jsonl(embedded.generate_examples())
    rows = embedded.generate_examples()
    assert 200 <= len(rows) <= 1000
    assert all(r["messages"][1]["role"] == "assistant" for r in rows)


def test_generator_is_deterministic_and_answers_are_right():
    rows = embedded.generate_examples(50, seed=7)
    assert rows == embedded.generate_examples(50, seed=7)
    for row in rows:
        question, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        if question.startswith("What is"):
            expr, result = answer.split(" = ")
            assert eval(expr.replace("x", "*")) == int(result)  # noqa: S307 (our own generated text)


def test_model_builds_and_loads_with_transformers(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMWIZARD_CACHE", str(tmp_path))
    path = embedded.ensure_embedded_model()
    assert path.parent.parent == tmp_path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    params = sum(p.numel() for p in model.parameters())
    assert params < 1_000_000
    from llmwizard.autotune.model_spec import load_model_spec

    assert load_model_spec(None).total_params == params
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4"}],
        tokenize=False)
    assert text == "<|user|>What is 2 + 2?<|assistant|>2 + 2 = 4</s>"


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMWIZARD_CACHE", str(tmp_path))
    path = embedded.ensure_embedded_model()
    good = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(good[: len(good) // 2])
    assert embedded.ensure_embedded_model() == path
    assert (path / "model.safetensors").read_bytes() == good
    (path / "manifest.json").unlink()
    embedded.ensure_embedded_model()
    assert json.loads((path / "manifest.json").read_text())


def test_cached_model_folder_replaced_by_a_file_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMWIZARD_CACHE", str(tmp_path))
    target = embedded.embedded_model_dir()
    target.parent.mkdir(parents=True)
    target.write_text("not a model")
    path = embedded.ensure_embedded_model()
    assert path == target and (path / "model.safetensors").is_file()


@pytest.mark.parametrize("where", ["a file", "an impossible path"])
def test_unusable_cache_falls_back_with_a_warning_naming_it(tmp_path, where):
    """LLMWIZARD_CACHE pointing at a file, or somewhere nothing can be created: the plan still works,
    from a per-user cache in the temporary directory, and stderr says which path failed and the fix."""
    bad = tmp_path / "cache-file" if where == "a file" else Path("/proc/llmwizard-cache")
    if where == "a file":
        bad.write_text("x")
    result = run_cli("plan", "--max-steps", "5", env={"LLMWIZARD_CACHE": str(bad)})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert str(bad) in result.stderr and "LLMWIZARD_CACHE" in result.stderr
    assert "llmwizard-cache-" in result.stderr
    if where == "a file":
        assert bad.read_text() == "x"  # the user's file is left alone
