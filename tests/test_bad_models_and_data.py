"""Bad model configs, datasets and images are refused before any work is done: exit code 2, no
traceback, the file, the key (or line), the value and what is allowed named. Each case runs the real
`llmwizard plan` on real files; a config.json is the embedded tiny model's with one change."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from llmwizard.autotune.embedded import EMBEDDED_MODEL, MODEL_CONFIG
from llmwizard.autotune.embedded.vision import EMBEDDED_VISION_MODEL, VISION_MODEL_CONFIG
from llmwizard.autotune.model.param_counts import CONFIG_CEILINGS
from tests.conftest import run_cli
from tests.refusals import assert_refused, flat

DROP = object()  # a change that removes the key

# (case, the base config, its change, the words the refusal must hold)
CONFIG_CASES: list[tuple[str, dict[str, Any], dict[str, Any], list[str]]] = [
    ("layers 10**12", MODEL_CONFIG, {"num_hidden_layers": 10**12},
     ["config.json", "`num_hidden_layers`", "1000000000000", "from 1 to 10,000"]),
    ("negative hidden size", MODEL_CONFIG, {"hidden_size": -64}, ["`hidden_size`", "-64", "from 1 to 1,000,000"]),
    ("zero heads", MODEL_CONFIG, {"num_attention_heads": 0}, ["`num_attention_heads`", "is 0", "an integer from 1"]),
    ("zero layers", MODEL_CONFIG, {"num_hidden_layers": 0}, ["`num_hidden_layers`", "is 0"]),
    ("fractional vocabulary", MODEL_CONFIG, {"vocab_size": 1.5}, ["`vocab_size`", "1.5", "an integer"]),
    ("zero positions", MODEL_CONFIG, {"max_position_embeddings": 0}, ["`max_position_embeddings`", "is 0"]),
    ("layers as a string", MODEL_CONFIG, {"num_hidden_layers": "4"}, ["`num_hidden_layers`", '"4"', "an integer"]),
    ("size as a boolean", MODEL_CONFIG, {"intermediate_size": True}, ["`intermediate_size`", "true"]),
    ("vocabulary above the ceiling", MODEL_CONFIG, {"vocab_size": 10**9}, ["`vocab_size`", "100,000,000"]),
    ("zero head_dim", MODEL_CONFIG, {"head_dim": 0}, ["`head_dim`", "is 0"]),
    ("no hidden size", MODEL_CONFIG, {"hidden_size": DROP}, ["config.json", "lacks `hidden_size`"]),
    ("heads do not divide the hidden size", MODEL_CONFIG, {"num_attention_heads": 5, "head_dim": DROP},
     ["`num_attention_heads` 5 does not divide `hidden_size` 64", "head_dim"]),
    ("kv heads do not divide the heads", MODEL_CONFIG, {"num_key_value_heads": 3},
     ["`num_key_value_heads` 3 does not divide `num_attention_heads` 4"]),
    ("more experts per token than experts", MODEL_CONFIG, {"num_local_experts": 4, "num_experts_per_tok": 8},
     ["`num_experts_per_tok` 8", "4 experts"]),
    ("negative experts", MODEL_CONFIG, {"num_experts": -1}, ["`num_experts`", "-1"]),
    ("tie flag as a string", MODEL_CONFIG, {"tie_word_embeddings": "false"},
     ["`tie_word_embeddings`", "true or false"]),
    ("model_type not a string", MODEL_CONFIG, {"model_type": 7}, ["`model_type`", "7", "string"]),
    ("vision tower of no blocks", VISION_MODEL_CONFIG, {"vision_config": {**VISION_MODEL_CONFIG["vision_config"],
                                                                          "depth": 0}},
     ["`vision_config.depth`", "is 0"]),
    ("vision patch of 0 pixels", VISION_MODEL_CONFIG, {"vision_config": {**VISION_MODEL_CONFIG["vision_config"],
                                                                          "patch_size": 0}},
     ["`vision_config.patch_size`", "is 0"]),
    ("text_config a list", VISION_MODEL_CONFIG, {"text_config": [1]}, ["`text_config`", "[1]", "object"]),
]


def _model_dir(root: Path, base: dict[str, Any], change: dict[str, Any]) -> Path:
    config = dict(base)
    for key, value in change.items():
        if value is DROP:
            config.pop(key, None)
        else:
            config[key] = value
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize("case, base, change, words", CONFIG_CASES, ids=[case[0] for case in CONFIG_CASES])
def test_bad_model_config_is_refused_naming_file_key_and_value(tmp_path, case, base, change, words):
    directory = _model_dir(tmp_path / "model", base, change)
    before = (directory / "config.json").read_bytes()
    # Short timeout: 10**12 layers used to grow without bound; the refusal comes before any counting.
    result = run_cli("plan", "--model", str(directory), cwd=tmp_path, timeout=60)
    message = assert_refused(result, words)
    assert str(directory / "config.json") in message or "config.json" in message
    assert (directory / "config.json").read_bytes() == before


@pytest.mark.parametrize("text, words", [
    ("[" + json.dumps(MODEL_CONFIG) + "]", ["config.json", "JSON list", "not an object"]),
    ('"llama"', ["config.json", "JSON string"]),
    ("[" * 100_000 + "]" * 100_000, ["config.json", "nests its JSON too deeply"]),
], ids=["a list", "a string", "deep nesting"])
def test_config_json_that_is_not_an_object_is_refused(tmp_path, text, words):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(text)
    assert_refused(run_cli("plan", "--model", str(tmp_path / "model"), cwd=tmp_path, timeout=60), words)


def test_every_catalog_model_passes_the_config_checks():
    from llmwizard.autotune.model.model_spec import catalog_names, load_model_spec

    for name in catalog_names():
        assert load_model_spec(name).warnings == [], name


def test_ceilings_are_far_above_every_catalog_model():
    from llmwizard.autotune.model.model_spec import catalog_names, load_model_spec

    for name in catalog_names():
        spec = load_model_spec(name)
        assert spec.num_layers * 10 < CONFIG_CEILINGS["layers"]
        assert spec.hidden_size * 10 < CONFIG_CEILINGS["width"] and spec.vocab_size * 10 < CONFIG_CEILINGS["vocab"]


def test_unknown_model_type_is_refused_naming_it_and_the_flag(tmp_path):
    """An unknown type is never planned as a Llama-style decoder: without consent to run the model's
    code it is refused; with it, a model no code can build is refused too (its size is unknown)."""
    directory = _model_dir(tmp_path / "model", MODEL_CONFIG, {"model_type": "homegrown", "architectures": DROP})
    assert_refused(run_cli("plan", "--model", str(directory), "--max-steps", "2", cwd=tmp_path),
                   ["model_type 'homegrown'", "--trust-remote-code", "own code", "on this machine"])
    assert_refused(run_cli("plan", "--model", str(directory), "--trust-remote-code", cwd=tmp_path),
                   ["could not build it on the meta device", "will not plan it as another model"])


@pytest.mark.parametrize("name, text, words", [
    ("tokenizer.json", "{not a tokenizer", ["tokenizer.json", "Restore the model's tokenizer.json"]),
    ("tokenizer_config.json", "{not json", ["tokenizer_config.json", "not readable JSON"]),
    ("tokenizer_config.json", "[1, 2]", ["tokenizer_config.json", "JSON list"]),
    ("chat_template.jinja", "{% for %}", ["chat_template.jinja", "does not parse"]),
], ids=["tokenizer not JSON", "tokenizer config not JSON", "tokenizer config a list", "template does not parse"])
def test_broken_tokenizer_files_are_refused_naming_the_file(tmp_path, name, text, words):
    import shutil

    from llmwizard.autotune.embedded.vision import ensure_embedded

    directory = _model_dir(tmp_path / "model", MODEL_CONFIG, {})
    source = ensure_embedded(EMBEDDED_MODEL)
    for kept in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / kept, directory / kept)
    (directory / name).write_text(text)
    assert_refused(run_cli("plan", "--model", str(directory), cwd=tmp_path, timeout=60), words)


# ----------------------------------------------------------------------------- datasets

def _rows(count: int) -> list[dict[str, str]]:
    return [{"prompt": f"{i} + {i} =", "completion": f" {2 * i}"} for i in range(count)]


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


DEEP = "[" * 100_000 + "]" * 100_000

DATASET_CASES: list[tuple[str, str, list[str], list[str]]] = [
    # (case, file name, its lines, words)
    ("deep nesting in JSON lines", "data.jsonl",
     [json.dumps(_rows(1)[0]), '{"prompt": "a", "completion": "b", "meta": ' + DEEP + "}"],
     ["data.jsonl", "line 2", "nests lists or objects too deeply"]),
    ("deep nesting in a JSON document", "data.json",
     ["[", json.dumps(_rows(1)[0]) + ",", '{"prompt": "a", "completion": ' + DEEP + "}", "]"],
     ["data.json", "line 3", "too deeply"]),
    ("one row and the default evaluation split", "data.jsonl", [json.dumps(row) for row in _rows(1)],
     ["data.jsonl", "has 1 row", "0.1", "leaves no row to train on", "--eval-fraction 0", "Add rows"]),
]


@pytest.mark.parametrize("case, name, lines, words", DATASET_CASES, ids=[case[0] for case in DATASET_CASES])
def test_bad_dataset_is_refused_naming_file_and_line(tmp_path, case, name, lines, words):
    path = _jsonl(tmp_path / name, lines)
    assert_refused(run_cli("plan", "--dataset", str(path), cwd=tmp_path, timeout=120), words)


def test_two_rows_hold_one_out_and_train_on_the_other_with_a_warning(tmp_path):
    """The training entry holds out ceil(0.49 x 2) = 1 row and trains on 1: planned, and said."""
    path = _jsonl(tmp_path / "data.jsonl", [json.dumps(row) for row in _rows(2)])
    result = run_cli("plan", "--dataset", str(path), "--eval-fraction", "0.49", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "only 2 examples" in flat(result.stdout) and "1 of them is held out" in flat(result.stdout)


def test_one_row_without_evaluation_plans_with_a_tiny_dataset_warning(tmp_path):
    path = _jsonl(tmp_path / "data.jsonl", [json.dumps(row) for row in _rows(1)])
    result = run_cli("plan", "--dataset", str(path), "--eval-fraction", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    text = flat(result.stdout)
    assert "only 1 example (fewer than 10)" in text and "held out" not in text


def test_a_csv_field_longer_than_the_csv_modules_default_limit_is_read(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text\n" + "\n".join(f'"{"word " * 40_000}{i}"' for i in range(12)) + "\n")
    result = run_cli("plan", "--dataset", str(path), "--max-steps", "1", "--allow-truncation", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- images

def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height RGB pixels and holds none: what Pillow reads to learn
    the size (Image.open decodes nothing), made in microseconds instead of a real 300 MB image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def _vision_rows(tmp_path: Path, big: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "ok.png")
    rows = [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Shape?"}]},
                          {"role": "assistant", "content": "A red square."}],
             "images": [name]} for name in ["ok.png"] * 11 + [big.name]]
    return _jsonl(tmp_path / "data.jsonl", [json.dumps(row) for row in rows])


@pytest.mark.parametrize("width, height, words", [
    (10_000, 10_000, ["big.png", "10000x10000", "286 MiB decoded", "256 MiB", "line 12", "downscale it"]),
    (20_000, 20_000, ["big.png", "400000000 pixels", "too large to decode", "line 12", "downscale it"]),
    (3_000, 10, ["line 12", "3000x10", "more than 200 times wider than high", "crop or pad it"]),
], ids=["over the decode bound", "over Pillow's limit", "wider than the processor takes"])
def test_image_the_run_cannot_take_is_refused_naming_it_and_its_size(tmp_path, width, height, words):
    big = _png_header(tmp_path / "big.png", width, height)
    result = run_cli("plan", "--model", EMBEDDED_VISION_MODEL, "--dataset", str(_vision_rows(tmp_path, big)),
                     cwd=tmp_path, timeout=120)
    assert_refused(result, words)
    assert "DecompressionBombWarning" not in result.stderr


def test_large_image_within_the_bound_plans_with_its_decode_cost_said(tmp_path):
    big = _png_header(tmp_path / "big.png", 6000, 5000)  # 86 MiB decoded
    result = run_cli("plan", "--model", EMBEDDED_VISION_MODEL, "--dataset", str(_vision_rows(tmp_path, big)),
                     cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The largest image (6000x5000) is decoded whole" in flat(result.stdout)


def test_hub_config_in_the_local_cache_passes_the_same_checks(tmp_path):
    """A hub id resolves to the cached config.json, which the same check refuses, naming that file."""
    snapshot = tmp_path / "hub" / "models--someorg--broken" / "snapshots" / "0123abcd"
    _model_dir(snapshot, MODEL_CONFIG, {"num_attention_heads": 0})
    (tmp_path / "hub" / "models--someorg--broken" / "refs").mkdir()
    (tmp_path / "hub" / "models--someorg--broken" / "refs" / "main").write_text("0123abcd")
    result = run_cli("plan", "--model", "someorg/broken", cwd=tmp_path, timeout=60,
                     env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert_refused(result, ["models--someorg--broken", "config.json", "`num_attention_heads` is 0"])


@pytest.mark.parametrize("change, words", [
    ({"merge_size": 0}, ["processor_config.json", "`merge_size` is 0", "from 1 to"]),
    ({"patch_size": "14"}, ["processor_config.json", "`patch_size` is '14'"]),
    ({"size": {"shortest_edge": 20_000, "longest_edge": 100}}, ["`min_pixels` 20,000 is more than `max_pixels` 100"]),
    (None, ["processor_config.json", "not readable JSON"]),
], ids=["zero merge", "patch as a string", "min above max", "not JSON"])
def test_bad_processor_settings_are_refused_naming_the_file(tmp_path, change, words):
    """The image-token rule reads the model's processor settings: what it cannot use is refused."""
    import shutil

    from llmwizard.autotune.embedded.vision import ensure_embedded

    source = ensure_embedded(EMBEDDED_VISION_MODEL)
    directory = tmp_path / "model"
    directory.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(source / name, directory / name)
    processor = json.loads((source / "processor_config.json").read_text())
    processor["image_processor"].update(change or {})
    (directory / "processor_config.json").write_text(json.dumps(processor) if change is not None else "{broken")
    big = _png_header(tmp_path / "big.png", 64, 64)
    result = run_cli("plan", "--model", str(directory), "--dataset", str(_vision_rows(tmp_path, big)), cwd=tmp_path,
                     timeout=120)
    assert_refused(result, words)
