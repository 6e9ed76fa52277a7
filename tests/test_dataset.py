from __future__ import annotations

import csv
import json

import pytest

from llmwizard.autotune.data.dataset import (detect_format, histogram, load_rows, normalize_rows, percentile,
                              profile_dataset, resolve_dataset)
from llmwizard.autotune.embedded import EMBEDDED_DATASET, ensure_embedded_model
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.data.tokens import counter_for


def test_formats_are_detected_and_mapped():
    assert detect_format(["messages"])[0] == "messages"
    assert detect_format(["prompt", "completion", "id"])[0] == "prompt_completion"
    assert detect_format(["text"])[0] == "text"
    fmt, rows = normalize_rows([{"instruction": "Add", "input": "2 and 3", "output": "5"}])
    assert fmt == "messages"
    assert rows[0]["messages"] == [{"role": "user", "content": "Add\n\n2 and 3"},
                                   {"role": "assistant", "content": "5"}]
    fmt, rows = normalize_rows([{"conversations": [{"from": "human", "value": "hi"},
                                                   {"from": "gpt", "value": "hello"}]}])
    assert rows[0]["messages"][1] == {"role": "assistant", "content": "hello"}


def test_rows_without_a_usable_field_name_the_columns():
    with pytest.raises(UserError, match=r"found columns \['input', 'label'\]") as err:
        detect_format(["input", "label"])
    assert "messages" in err.value.fix


def test_malformed_row_is_named():
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            {"messages": [{"role": "user", "content": "only a question"}]}]
    with pytest.raises(UserError, match="row 2"):
        normalize_rows(rows, "data.jsonl")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        resolve_dataset(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "data.txt"
    bad.write_text("hello")
    with pytest.raises(UserError, match="unsupported type"):
        resolve_dataset(str(bad))


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(UserError, match="line 2"):
        load_rows(resolve_dataset(str(path)))


def test_json_csv_and_parquet_load_the_same_rows(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    with open(tmp_path / "d.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "completion"])
        writer.writeheader()
        writer.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.json", "d.csv", "d.parquet"):
        assert load_rows(resolve_dataset(str(tmp_path / name))) == rows


def test_percentiles_and_histogram():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([7], 99) == 7
    buckets = histogram(values, buckets=10)
    assert sum(count for _, _, count in buckets) == 100
    assert buckets[0][0] == 1


def test_profile_counts_tokens_exactly_like_transformers():
    model_dir = ensure_embedded_model()
    profile = profile_dataset(EMBEDDED_DATASET, counter_for(model_dir))
    assert profile.num_examples == 900 and profile.exact_tokens
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    _, rows = normalize_rows(load_rows(EMBEDDED_DATASET))
    lengths = sorted(len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
                     for r in rows)
    assert profile.max_tokens == lengths[-1]
    assert profile.p50_tokens == percentile(lengths, 50)
    assert profile.mean_tokens == pytest.approx(sum(lengths) / len(lengths), abs=0.05)


def test_estimate_counter_without_a_tokenizer(write_jsonl):
    path = write_jsonl([{"text": "x" * 400}] * 3)
    profile = profile_dataset(resolve_dataset(str(path)), counter_for(None))
    assert not profile.exact_tokens
    assert profile.max_tokens == 100


def test_json_document_shapes(tmp_path):
    rows = [{"text": "one"}, {"text": "two"}]
    shapes = {"list.json": rows, "data.json": {"data": rows}, "train.json": {"train": rows}}
    for name, document in shapes.items():
        (tmp_path / name).write_text(json.dumps(document, indent=2))
        assert load_rows(resolve_dataset(str(tmp_path / name))) == rows, name
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_rows(resolve_dataset(str(tmp_path / "lines.json"))) == rows
