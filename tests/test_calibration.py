"""The calibration store: ratios kept per key and bounded, a corrupt or foreign file ignored with a
warning, and the `llmwizard calibration` command. Every test points the store at its own directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmwizard.autotune.machine import calibration
from llmwizard.autotune.machine.calibration import FORMAT, MAX_KEYS, MAX_RATIOS, VERSION, Key, Store

from tests.conftest import run_cli

KEY = Key("cpu", "llama", "lora", "single")


@pytest.fixture()
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(calibration.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_ratios_are_kept_per_key_and_averaged(store_dir: Path):
    store = Store.load()
    assert store.path == store_dir / "calibration.json" and not store.entries and not store.warnings
    for ratio in (1.05, 1.07, 1.09):
        assert store.record(KEY, ratio, 0.5)
    store.record(Key("cpu", "llama", "lora", "ddp"), 1.3)
    store.record(Key("cpu", "qwen2", "lora", "single"), 2.0)
    store.save()
    again = Store.load()
    factors = again.factors("cpu", "llama", "lora")
    assert set(factors) == {"single", "ddp"}
    assert factors["single"].factor == pytest.approx(1.07)
    assert factors["single"].label == "calibrated from 3 probes on this machine: x1.07"
    assert again.entries[KEY].speed_factor() == pytest.approx(0.5)


def test_the_store_is_bounded_and_refuses_implausible_ratios(store_dir: Path):
    store = Store.load()
    for i in range(MAX_RATIOS + 5):
        store.record(KEY, 1.0 + i / 100)
    assert len(store.entries[KEY].memory) == MAX_RATIOS \
        and store.entries[KEY].memory[-1] == pytest.approx(1.0 + (MAX_RATIOS + 4) / 100)
    for i in range(MAX_KEYS + 3):
        store.record(Key("cpu", f"family{i}", "lora", "single"), 1.0)
    assert len(store.entries) == MAX_KEYS
    assert not store.record(Key("cpu", "x", "lora", "single"), float("nan"))
    assert not store.record(Key("cpu", "x", "lora", "single"), 40.0)
    assert Key("cpu", "x", "lora", "single") not in store.entries


@pytest.mark.parametrize("content, words", [
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "someone-else", "version": 1, "entries": {}}), "not an llmwizard calibration store"),
    (json.dumps({"format": FORMAT, "version": VERSION + 1, "entries": {}}), "not an llmwizard calibration store"),
    (json.dumps([1, 2, 3]), "not an llmwizard calibration store"),
    ("\udcff".encode("utf-8", "surrogateescape").decode("latin-1"), "not valid JSON"),
])
def test_a_corrupt_or_foreign_store_is_ignored_with_a_warning(store_dir: Path, content: str, words: str):
    store_dir.mkdir(parents=True)
    (store_dir / "calibration.json").write_text(content, encoding="utf-8")
    store = Store.load()
    assert not store.entries and len(store.warnings) == 1 and words in store.warnings[0]
    store.record(KEY, 1.1)
    store.save()  # the next probe replaces it with a good one
    assert Store.load().factors("cpu", "llama", "lora")["single"].factor == pytest.approx(1.1)


def test_a_damaged_entry_is_skipped_and_the_rest_kept(store_dir: Path):
    store_dir.mkdir(parents=True)
    (store_dir / "calibration.json").write_text(json.dumps({"format": FORMAT, "version": VERSION, "entries": {
        KEY.text(): {"memory": [1.2], "speed": [], "updated": 1.0},
        "cpu|llama|lora|ddp": {"memory": ["lots"], "speed": [], "updated": 1.0},
        "no-key": {"memory": [1.0], "speed": [], "updated": 1.0},
    }}), encoding="utf-8")
    store = Store.load()
    assert list(store.entries) == [KEY] and len(store.warnings) == 2


def test_the_calibration_command_shows_calibrates_estimates_and_resets(store_dir: Path):
    env = {calibration.CACHE_ENV: str(store_dir)}
    empty = run_cli("calibration", env=env)
    assert empty.returncode == 0 and "No calibration yet" in empty.stdout
    store = Store.load()
    for ratio in (1.05, 1.07, 1.09):
        store.record(KEY, ratio, 0.02)
    store.save()
    shown = run_cli("calibration", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)["entries"]
    assert rows == [{"gpu": "cpu", "family": "llama", "method": "lora", "strategy": "single", "memory_factor": 1.07,
                     "probes": 3, "speed_factor": 0.02, "speed_probes": 3}]
    table = run_cli("calibration", env=env)
    assert "1.07" in table.stdout and "llama" in table.stdout
    estimated = run_cli("estimate", "--model", "embedded:tiny-llama", "--gpus", "cpu", "--seq", "256", "--batch", "4",
                        "--json", env=env)
    assert estimated.returncode == 0, estimated.stderr
    data = json.loads(estimated.stdout)
    assert data["calibration"] == "calibrated from 3 probes on this machine: x1.07"
    assert data["per_gpu"]["total"] == pytest.approx(
        (data["tensor_peak"] + sum(data["reserved_parts"].values())) * 1.07, abs=2)
    reset = run_cli("calibration", "--reset", env=env)
    assert reset.returncode == 0 and "Removed" in reset.stdout
    assert not (store_dir / "calibration.json").exists()
    (store_dir / "calibration.json").write_text("garbage", encoding="utf-8")
    warned = run_cli("estimate", "--model", "embedded:tiny-llama", "--gpus", "cpu", "--seq", "256", "--batch", "4",
                     env=env)
    assert warned.returncode == 0 and "not valid JSON" in warned.stderr  # a warning, never a crash
