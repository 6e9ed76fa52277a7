"""The embedded default: the bundled sums, the tiny model's build and cache, the plan it gets, and the
held-out exact-answer score a run ends with."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llmwizard.autotune import embedded
from llmwizard.runner.rank import samples as samples_module
from tests.conftest import run_cli
from tests.refusals import flat


def test_bundled_dataset_is_what_the_generator_makes():
    assert embedded.DATASET_PATH.read_text() == embedded.dataset_jsonl(embedded.generate_examples())
    rows = embedded.generate_examples()
    assert 200 <= len(rows) < 1000  # a "small" dataset by the rule the main command's preset names
    assert all(r["messages"][1]["role"] == "assistant" for r in rows)
    questions = [r["messages"][0]["content"] for r in rows]
    assert len(set(questions)) == len(questions)  # each sum once: the held-out split is never trained on


def test_generator_is_deterministic_and_answers_are_right():
    rows = embedded.generate_examples(50, seed=7)
    assert rows == embedded.generate_examples(50, seed=7)
    assert rows != embedded.generate_examples(50, seed=8)
    for row in rows:
        question, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        a, b = question.removesuffix("=").split("+")  # the form `llmwizard try RUN "12+7="` sends
        assert int(a) + int(b) == int(answer)


def test_the_vision_tokenizers_words_are_the_old_word_problems():
    """The embedded vision models' tokenizers are trained on word problems, not on the bare sums."""
    texts = [m["content"] for row in embedded.word_problems() for m in row["messages"]]
    assert len(texts) == 800 and any(t.startswith("Convert ") for t in texts)


def test_model_builds_and_loads_with_transformers(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMWIZARD_CACHE", str(tmp_path))
    path = embedded.ensure_embedded_model()
    assert path.parent.parent == tmp_path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    params = sum(p.numel() for p in model.parameters())
    assert params < 1_000_000
    from llmwizard.autotune.model.model_spec import load_model_spec

    assert load_model_spec(None).total_params == params
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "12+7="}, {"role": "assistant", "content": "19"}], tokenize=False)
    assert text == "<|user|>12+7=<|assistant|>19</s>"
    # Digits stay single tokens, so "12" and "21" share their parts and sums can be learned digit by digit.
    assert tokenizer.convert_ids_to_tokens(tokenizer("123+45=", add_special_tokens=False)["input_ids"]) == \
        ["1", "2", "3", "+", "4", "5", "="]


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


def test_the_main_command_plans_full_fine_tuning_of_the_random_init_model_and_a_pinned_method_stays():
    planned = flat(run_cli("plan", "--preset", "small-dataset").stdout)
    assert "full fine-tuning" in planned and "instead of lora from preset small-dataset" in planned
    assert "randomly initialised" in planned and "0.003" in planned
    pinned = run_cli("plan", "--preset", "small-dataset", "--method", "lora")
    assert pinned.returncode == 0, pinned.stderr
    assert "full fine-tuning" not in flat(pinned.stdout) and "rank 4" in flat(pinned.stdout)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The main command, cut to two steps: (its run directory, its output)."""
    root = tmp_path_factory.mktemp("main")
    result = run_cli("--preset", "small-dataset", "--yes", "--max-steps", "2", cwd=root,
                     env={"LLMWIZARD_CACHE": str(root / "cache")})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    (run_dir,) = (root / "runs").iterdir()
    return run_dir, flat(result.stdout)


def test_a_run_scores_its_held_out_sums_and_the_summary_shows_the_rate(short_run):
    run_dir, output = short_run
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == samples_module.SCORED_COUNT  # the held-out split (90 sums) holds more than enough
    for row in rows:
        assert row["exact"] is samples_module.is_exact(row["output"], row["reference"])
        a, b = row["prompt"].removesuffix("=").split("+")
        assert int(row["reference"]) == int(a) + int(b)
    bundled = {json.loads(line)["messages"][0]["content"] for line in embedded.DATASET_PATH.read_text().splitlines()}
    assert {row["prompt"] for row in rows} <= bundled and len({row["prompt"] for row in rows}) == len(rows)
    exact = sum(row["exact"] for row in rows)
    assert f"held-out {exact}/{len(rows)} answers exact" in output


def test_the_exact_answer_rate_counts_only_real_scores(tmp_path):
    lines = [{"prompt": "1+1=", "reference": "2", "output": "2", "exact": True},
             {"prompt": "2+2=", "reference": "4", "output": "5", "exact": False},
             {"prompt": "3+3=", "reference": "6", "output": "6", "exact": "yes"},  # damaged: not a score
             {"prompt": "Tell a story.", "reference": "Once upon a time", "output": "Once"}]  # long: not scored
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    read = samples_module.read_samples(tmp_path)
    assert samples_module.exact_rate(read) == (1, 2)
    assert samples_module.exact_line(read).startswith("1/2 answers exact (50%)")
    assert samples_module.exact_line(read[3:]) is None
    assert samples_module.is_exact(" 19 ", "19") and not samples_module.is_exact("19 0", "190")


def test_only_short_answers_are_scored(short_run):
    """A long reference is generated for show (the first rows) but never given an exact score, and rows
    past the shown ones are generated only when their answer is short."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = short_run
    model = AutoModelForCausalLM.from_pretrained(run_dir / "output")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "output")
    long = {"messages": [{"role": "user", "content": "Count."}, {"role": "assistant", "content": " ".join("1" * 40)}]}
    short = {"messages": [{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "3"}]}
    got = samples_module.eval_samples(model, tokenizer, [long, long, short], count=1, scored=3)
    assert [row["prompt"] for row in got] == ["Count.", "1+2="]
    assert "exact" not in got[0] and isinstance(got[1]["exact"], bool)


@pytest.mark.slow
def test_the_main_command_learns_to_add_sums_it_never_saw(tmp_path):
    """The README's main command, whole: the held-out sums come out mostly right, and `try` answers
    a sum the way a newcomer types it. (The run is seeded: the rate is the same on every machine
    up to floating-point order.)"""
    result = run_cli("--preset", "small-dataset", "--yes", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = re.search(r"held-out\s+(\d+)/(\d+) answers exact", " ".join(result.stdout.split()))
    assert found, result.stdout[-3000:]
    right, asked = int(found.group(1)), int(found.group(2))
    assert asked >= 20 and right / asked >= 0.7, found.group(0)
    (run_dir,) = (tmp_path / "runs").iterdir()
    tried = run_cli("try", str(run_dir), "12+7=", cwd=tmp_path, timeout=300)
    assert tried.returncode == 0, tried.stderr[-2000:]
    lines = tried.stdout.splitlines()
    title = next(i for i, line in enumerate(lines) if "tuned:" in line)
    tuned = lines[title + 1].split("│")[1]  # the first panel's first line: the tuned model's answer
    assert tuned.strip() == "19", tried.stdout
    for chatter in ("_pytree", "Loading weights", "Failed to load", "FutureWarning"):  # libraries' start-up noise
        assert chatter not in tried.stdout + tried.stderr, tried.stderr
