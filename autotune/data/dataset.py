"""Dataset loading, format detection and the token-length profile.

Rows are normalised to one of the three formats TRL's SFTTrainer reads natively: chat
`messages`, `prompt`/`completion`, or a `text` field. Common other shapes (ShareGPT
`conversations`, Alpaca `instruction`/`input`/`output`, `question`/`answer`) are mapped to chat
messages. The training entry applies the same `normalize_row`, so what is profiled is what trains.
The preference and reward tasks (`task` other than "sft") read their own formats
(llmwizard.autotune.data.preference).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmwizard.autotune.data import images as img
from llmwizard.autotune.data import preference
from llmwizard.autotune.embedded import DATASET_PATH, EMBEDDED_DATASET
from llmwizard.autotune.embedded.task_data import TASK_DATASET_PATHS
from llmwizard.autotune.embedded.vision import EMBEDDED_VISION_DATASET, ensure_shapes_dataset
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.schema import DatasetFormat, Task

SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
FORMATS = ("messages", "prompt_completion", "text")
# Token lengths are measured on at most this many rows (evenly spaced): enough for a p99.
PROFILE_SAMPLE = 4000
# Fewer examples than this and a run memorises them: the plan warns that its loss says little.
TINY_DATASET_ROWS = 10
# The longest CSV field read (the csv module's default of 128 KiB refuses long documents).
CSV_FIELD_LIMIT = 1 << 30

_ACCEPTED = (
    "`messages` (list of {role, content}), `conversations` (ShareGPT from/value), "
    "`prompt` + `completion`, `instruction` [+ `input`] + `output`, `question` + `answer`, or `text`"
)
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "model": "assistant"}


def resolve_dataset(source: str | None, task: Task = "sft") -> str:
    """The dataset as the plan records it: an embedded set (None: the task's, e.g. `embedded:arithmetic`
    for SFT), an absolute path, or a hub name."""
    if source is None:
        return preference.DEFAULT_DATASETS[task]
    if source in (EMBEDDED_DATASET, EMBEDDED_VISION_DATASET) or source in TASK_DATASET_PATHS:
        return source
    path = Path(source).expanduser()
    if path.suffix.lower() in SUFFIXES or path.exists() or source.startswith((".", "/", "~")):
        if not path.is_file():
            raise UserError(
                f"Dataset file not found: {source}",
                title="Dataset",
                fix="Pass --dataset with a path to a .jsonl, .json, .csv or .parquet file, "
                "or leave it out to use the bundled example dataset.",
            )
        if path.suffix.lower() not in SUFFIXES:
            raise UserError(
                f"Dataset file {source} has an unsupported type '{path.suffix or 'none'}'.",
                title="Dataset",
                fix="Convert it to .jsonl, .json, .csv or .parquet.",
            )
        return str(path.resolve())
    return source  # a hub dataset name, e.g. "trl-lib/Capybara"


def local_path(source: str) -> Path | None:
    """The file behind a resolved dataset source, or None for a hub dataset."""
    if source == EMBEDDED_DATASET:
        return DATASET_PATH
    if source == EMBEDDED_VISION_DATASET:
        return ensure_shapes_dataset()  # generated into the user cache on first use
    if source in TASK_DATASET_PATHS:
        return TASK_DATASET_PATHS[source]
    path = Path(source)
    return path if path.is_absolute() else None


def load_rows(source: str) -> list[dict[str, Any]]:
    """All rows of a local dataset as plain dicts (no pandas, no torch)."""
    path = local_path(source)
    if path is None:
        return _load_hub_rows(source)
    suffix = path.suffix.lower()
    try:
        whole = _whole_json(path) if suffix == ".json" else None
        if suffix == ".jsonl" or (suffix == ".json" and whole is None):
            rows = []
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise UserError(
                            f"{path}: line {number} is not valid JSON ({exc.args[0]}).",
                            title="Dataset", fix="Fix or remove that line; each line must be one JSON object.",
                        ) from None
                    except RecursionError:
                        raise _too_deep(path, number) from None
        elif suffix == ".json":
            data = whole
            found = data.get("data", data.get("train")) if isinstance(data, dict) else data
            if not isinstance(found, list):
                raise UserError(f"{path} holds no list of rows.", title="Dataset",
                                fix='Write a JSON array of objects, {"data": [...]}, or JSON lines.')
            rows = found
        elif suffix == ".csv":
            csv.field_size_limit(CSV_FIELD_LIMIT)
            with open(path, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
    except UserError:
        raise
    except RecursionError:  # a reader that recursed into a nested value (Parquet, nested lists)
        raise _too_deep(path, None) from None
    except (OSError, ValueError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"Could not read dataset {path}: {exc}", title="Dataset",
                        fix="Check that the file is readable and matches its extension.") from None
    if not rows:
        raise UserError(f"Dataset {path} has no rows.", title="Dataset", fix="Add examples to the file.")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"{path}: row {number} is not an object but {type(row).__name__}.",
                            title="Dataset", fix="Each row must be a JSON object with named fields.")
    return rows


def _whole_json(path: Path) -> Any:
    """The file as one JSON document, or None when it is JSON lines (several documents)."""
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except ValueError:
        return None
    except RecursionError:
        raise _too_deep(path, _deepest_line(text)) from None


# Python's JSON reader recurses once per nesting level and stops near the interpreter's recursion
# limit (1,000); no dataset row nests that deep on purpose.
def _too_deep(path: Path, line: int | None) -> UserError:
    """The refusal of a value nested deeper than the reader can follow (RecursionError)."""
    where = f"line {line}" if line is not None else "a row"
    return UserError(f"{path}: {where} nests lists or objects too deeply to read (hundreds of levels).",
                     title="Dataset", fix="Flatten or remove that row: a row is an object of text fields, "
                                          "`messages` or `images`, a few levels deep.")


def _deepest_line(text: str) -> int:
    """The line where the nesting of [ and { (outside strings) is deepest: the one to fix."""
    depth = deepest = 0
    line = at = 1
    in_string = escaped = False
    for char in text:
        if char == "\n":
            line += 1
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest, at = depth, line
        elif char in "]}":
            depth -= 1
    return at


def _load_hub_rows(name: str) -> list[dict[str, Any]]:
    try:
        import datasets

        return list(datasets.load_dataset(name, split="train"))
    except Exception as exc:  # offline, unknown name, gated: all are the user's to fix
        raise UserError(
            f"Could not load dataset '{name}' from the Hugging Face Hub: {str(exc).splitlines()[0]}",
            title="Dataset",
            fix="Check the name and your network, or download it and pass --dataset with a local file.",
        ) from None


def detect_format(columns: Iterable[str], task: Task = "sft") -> tuple[DatasetFormat,
                                                                      Callable[[dict[str, Any]], dict[str, Any]]]:
    """The TRL format a dataset maps to for `task`, and the row function that maps it (for KTO
    and pairs: the checked pair, which normalize_rows unpairs)."""
    if task != "sft":
        return preference.detect(columns, task, sft_fits=_sft_fits(columns))
    cols = set(columns)
    if "messages" in cols and img.has_images(cols):
        return "messages", _vision_messages
    if "messages" in cols:
        return "messages", _messages
    if "conversations" in cols:
        return "messages", _sharegpt
    if {"prompt", "completion"} <= cols:
        return "prompt_completion", _prompt_completion
    if "instruction" in cols and ({"output"} & cols or {"response"} & cols):
        return "messages", _alpaca
    if {"question", "answer"} <= cols:
        return "messages", _question_answer
    if "text" in cols:
        return "text", _text
    others = preference.fitting_tasks(cols)
    raise UserError(
        f"The dataset has no usable field: found columns {sorted(cols) or 'none'}.",
        title="Dataset",
        fix=f"Give each row one of {_ACCEPTED}." + (f" These columns fit --task {', '.join(others)}." if others else ""),
    )


def _sft_fits(columns: Iterable[str]) -> bool:
    try:
        detect_format(columns)
    except UserError:
        return False
    return True


def normalize_rows(rows: list[dict[str, Any]], source: str = "dataset",
                   on_image_size: Callable[[int, int], None] | None = None,
                   measure: Callable[[int], bool] | None = None,
                   task: Task = "sft") -> tuple[DatasetFormat, list[dict[str, Any]]]:
    """Detect the format from the first row and map every row, naming the first bad one.

    Rows with images also have them checked: every file must exist, and the rows `measure`
    picks (all by default) have their image headers read, which finds unreadable files and
    gives the sizes to `on_image_size`. For a preference or reward task the rows take its format
    (KTO's pairs unpaired: two rows each)."""
    path = local_path(source) if source != "dataset" else None
    if task != "sft":
        return preference.normalize(rows, task, source, lambda number: _where(path, number),
                                    sft_fits=_sft_fits(rows[0].keys()))
    fmt, convert = detect_format(rows[0].keys())
    vision = convert is _vision_messages
    base = path.parent if path is not None else None
    out = []
    for number, row in enumerate(rows, 1):
        try:
            converted = convert(row)
            if vision:
                check = measure(number - 1) if measure is not None else True
                converted["images"] = img.check_row(converted, base, check, on_image_size if check else None)
            out.append(converted)
        except img.ImageRowError as exc:
            where = _where(path, number)
            raise UserError(f"{source}: {where}: {exc}.", title="Dataset images",
                            fix="Fix the row's images (paths are relative to the dataset file), or remove the row; "
                                "each image part {\"type\": \"image\"} needs one entry in `images`.") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(
                f"{source}: {_where(path, number)} does not match the {fmt} format of row 1 ({exc}).",
                title="Dataset",
                fix=f"Make every row use the same fields: {_ACCEPTED}.",
            ) from None
    return fmt, out


def _where(path: Path | None, number: int) -> str:
    """"line N" of a JSON-lines file (blank lines counted as the editor does), else "row N"."""
    if path is None or path.suffix.lower() != ".jsonl":
        return f"row {number}"
    try:
        with open(path, encoding="utf-8") as f:
            seen = 0
            for line_number, line in enumerate(f, 1):
                seen += bool(line.strip())
                if seen == number:
                    return f"line {line_number}"
    except OSError:
        pass
    return f"row {number}"


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"`{name}` must be a non-empty string")
    return value


def _messages(row: dict[str, Any]) -> dict[str, Any]:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list")
    clean = []
    for message in messages:
        role = message["role"]
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"unknown role {role!r}")
        clean.append({"role": role, "content": _str(message["content"], "content")})
    if not any(m["role"] == "assistant" for m in clean):
        raise ValueError("no assistant message to learn from")
    return {"messages": clean}


def _vision_messages(row: dict[str, Any]) -> dict[str, Any]:
    """Chat messages with image parts; the `images` are checked by normalize_rows."""
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list")
    for message in messages:
        if message["role"] not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"unknown role {message['role']!r}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message to learn from")
    return {"messages": img.normalize_parts(messages), "images": img.row_images(row)}


def _sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    turns = row["conversations"]
    messages = [{"role": _SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in turns]
    return _messages({"messages": messages})


def _prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": _str(row["prompt"], "prompt"), "completion": _str(row["completion"], "completion")}


def _alpaca(row: dict[str, Any]) -> dict[str, Any]:
    prompt = _str(row["instruction"], "instruction")
    if isinstance(row.get("input"), str) and row["input"].strip():
        prompt = f"{prompt}\n\n{row['input']}"
    answer = row.get("output", row.get("response"))
    return _messages({"messages": [{"role": "user", "content": prompt},
                                   {"role": "assistant", "content": answer}]})


def _question_answer(row: dict[str, Any]) -> dict[str, Any]:
    return _messages({"messages": [{"role": "user", "content": row["question"]},
                                   {"role": "assistant", "content": row["answer"]}]})


def _text(row: dict[str, Any]) -> dict[str, Any]:
    return {"text": _str(row["text"], "text")}


@dataclass
class DatasetProfile:
    """What the planner needs to know about the data: its size and its real token lengths."""

    source: str
    format: DatasetFormat
    num_examples: int
    measured: int                      # rows whose tokens were counted
    tokenizer: str                     # what counted them, or "estimate (4 characters per token)"
    exact_tokens: bool
    mean_tokens: float
    p50_tokens: int
    p90_tokens: int
    p95_tokens: int
    p99_tokens: int
    max_tokens: int
    total_tokens: int                  # estimated over all rows
    histogram: list[tuple[int, int, int]] = field(default_factory=list)  # (low, high, count)
    # Images (vision-language data). The token figures above then count each image as the
    # processor expands it, so the planner's max length covers the image tokens.
    images: int = 0                    # over all rows
    examples_with_images: int = 0
    max_images_per_example: int = 0
    image_min_size: str = ""           # "WxH" of the smallest and largest image (by pixels)
    image_max_size: str = ""
    image_tokens_rule: str = ""        # how the model's processor counts them
    image_tokens_mean: float = 0.0     # per example, over the measured rows
    image_tokens_p99: int = 0
    image_tokens_max: int = 0
    text_tokens_mean: float = 0.0      # per example without the images
    text_tokens_p99: int = 0
    # Preference and reward tasks (llmwizard.autotune.data.preference). The token figures above are
    # the longest sequence one forward sees: the prompt and the longer response (DPO, ORPO), the
    # prompt and the completion (KTO), the prompt alone (GRPO). Each part's tokens apart, as TRL
    # splits them (the response starts where the prompt with its generation prompt ends):
    task: Task = "sft"
    prompt_tokens_p99: int = 0
    prompt_tokens_max: int = 0
    chosen_tokens_p99: int = 0         # DPO, ORPO
    chosen_tokens_max: int = 0
    rejected_tokens_p99: int = 0
    rejected_tokens_max: int = 0
    completion_tokens_p99: int = 0     # KTO
    completion_tokens_max: int = 0
    desirable_rows: int = 0            # KTO: label true
    undesirable_rows: int = 0          # KTO: label false
    note: str = ""                     # how the rows were read for the task (pairs unpaired, a prompt split off)

    def plan_warnings(self, eval_fraction: float) -> tuple[str, ...]:
        """Refuse an evaluation split that leaves no training row; warn when the data is tiny or
        its images cost host memory the estimate does not hold.

        The training entry holds out ceil(eval_fraction x rows) (datasets' train_test_split), so
        one row and the default 0.1 would otherwise plan and then fail after the launch."""
        rows = self.num_examples
        held_out = math.ceil(eval_fraction * rows) if eval_fraction > 0 else 0
        plural = "s" if rows != 1 else ""
        if rows - held_out < 1:
            raise UserError(
                f"{self.source} has {rows} row{plural}; holding out {eval_fraction:g} of them for evaluation "
                f"({held_out} row{'s' if held_out != 1 else ''}) leaves no row to train on.", title="Dataset",
                fix=f"Add rows to the dataset (at least {TINY_DATASET_ROWS} make a run worth watching), or pass "
                    "--eval-fraction 0 to train on every row without evaluation.")
        warnings = []
        if rows < TINY_DATASET_ROWS:
            split = (f"; {held_out} of them {'is' if held_out == 1 else 'are'} held out for evaluation"
                     if held_out else "")
            warnings.append(f"{self.source} has only {rows} example{plural} (fewer than {TINY_DATASET_ROWS}){split}: "
                            "the model memorises them, and neither loss says how it does on other inputs; "
                            "add examples.")
        if self.image_max_size:
            width, height = (int(side) for side in self.image_max_size.split("x"))
            decoded = img.decoded_bytes(width, height)
            if decoded > img.LARGE_DECODED_BYTES:
                warnings.append(
                    f"The largest image ({self.image_max_size}) is decoded whole before the processor shrinks it: "
                    f"about {4 * decoded / 1024**3:.1f} GiB of host memory per image while a batch is built, "
                    "beside the estimate (which holds what the processor feeds the model); downscaling the "
                    "images saves it.")
        return tuple(warnings)

    @property
    def image_token_share(self) -> float:
        """The image tokens' share of the mean sequence length."""
        return self.image_tokens_mean / self.mean_tokens if self.mean_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["histogram"] = [list(bucket) for bucket in self.histogram]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetProfile:
        data = dict(data)
        data["histogram"] = [tuple(bucket) for bucket in data.get("histogram", [])]
        return cls(**data)


def profile_dataset(source: str, counter: TokenCounter, image_rule: img.ImageTokenRule | None = None,
                    model_name: str | None = None, *, task: Task = "sft") -> DatasetProfile:
    """Count examples and measure token lengths with the model's own tokenizer and chat template.

    For rows with images, `image_rule` (the model's processor, llmwizard.autotune.data.images.token_rule)
    turns each image into its tokens; a model without one cannot take images. For a preference or
    reward task the rows are read in its format, and the prompt's and responses' tokens are also
    measured apart."""
    rows = load_rows(source)
    columns = list(rows[0].keys())
    sizes: list[tuple[int, int]] = []
    fmt, rows = normalize_rows(rows, source, on_image_size=lambda w, h: sizes.append((w, h)), task=task)
    step = max(1, len(rows) // PROFILE_SAMPLE)
    sample = rows[::step]
    extra: dict[str, Any] = {}
    if task != "sft":
        lengths, parts, extra = preference.measure(rows, task, counter, step)
        for part, values in parts.items():
            extra |= {f"{part}_tokens_p99": percentile(values, 99), f"{part}_tokens_max": values[-1]}
        extra["note"] = preference.describe(task, columns, rows)
    elif sizes or any("images" in row for row in rows[:1]):
        if image_rule is None:
            raise UserError(f"{source} has images, but {model_name or 'the model'} is a text-only model.",
                            title="Dataset images",
                            fix="Pick a vision-language model (embedded:tiny-vision, qwen2.5-vl-7b, gemma-3-4b) "
                                "or a dataset without an images column.")
        lengths, extra = _vision_lengths(rows, step, sizes, counter, image_rule, source)
    else:
        lengths = sorted(counter.count(row) for row in sample)
    mean = sum(lengths) / len(lengths)
    return DatasetProfile(
        source=source,
        format=fmt,
        num_examples=len(rows),
        measured=len(lengths),
        tokenizer=counter.name,
        exact_tokens=counter.exact,
        mean_tokens=round(mean, 1),
        p50_tokens=percentile(lengths, 50),
        p90_tokens=percentile(lengths, 90),
        p95_tokens=percentile(lengths, 95),
        p99_tokens=percentile(lengths, 99),
        max_tokens=lengths[-1],
        total_tokens=round(mean * len(rows)),
        histogram=histogram(lengths),
        **extra,
    )


def _vision_lengths(rows: list[dict[str, Any]], step: int, sizes: list[tuple[int, int]], counter: TokenCounter,
                    rule: img.ImageTokenRule, source: str) -> tuple[list[int], dict[str, Any]]:
    """Sequence lengths with each image's tokens, and the image figures of the profile.

    Every image goes through the model's processor rule (not only the measured rows): Qwen2-VL's
    refuses an image more than 200 times wider than high, and would do so in the middle of a run."""
    per_row: list[list[tuple[int, int]]] = []
    at = 0
    for number, row in enumerate(rows, 1):
        per_row.append(sizes[at:at + len(row["images"])])
        at += len(row["images"])
        for width, height in per_row[-1]:
            try:
                rule.tokens(width, height)
            except img.ImageRowError as exc:
                raise UserError(f"{source}: {_where(local_path(source), number)}: {exc}.", title="Dataset images",
                                fix="The model's processor refuses such an image: crop or pad it, or remove the "
                                    "row.") from None
    lengths, image_tokens, text_tokens = [], [], []
    for index in range(0, len(rows), step):
        row, row_sizes = rows[index], per_row[index]
        text = counter.count(row)
        tokens = sum(rule.tokens(w, h) for w, h in row_sizes)
        # The template renders one placeholder token per image, which the processor expands.
        lengths.append(text - len(row_sizes) + tokens)
        image_tokens.append(tokens)
        text_tokens.append(text - len(row_sizes))
    lengths.sort()
    image_tokens.sort()
    text_tokens.sort()
    by_pixels = sorted(sizes, key=lambda s: s[0] * s[1])
    return lengths, {
        "images": len(sizes),
        "examples_with_images": sum(1 for found in per_row if found),
        "max_images_per_example": max(len(found) for found in per_row),
        "image_min_size": f"{by_pixels[0][0]}x{by_pixels[0][1]}" if sizes else "",
        "image_max_size": f"{by_pixels[-1][0]}x{by_pixels[-1][1]}" if sizes else "",
        "image_tokens_rule": rule.description,
        "image_tokens_mean": round(sum(image_tokens) / len(image_tokens), 1),
        "image_tokens_p99": percentile(image_tokens, 99),
        "image_tokens_max": image_tokens[-1],
        "text_tokens_mean": round(sum(text_tokens) / len(text_tokens), 1),
        "text_tokens_p99": percentile(text_tokens, 99),
    }


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def histogram(sorted_values: list[int], buckets: int = 12) -> list[tuple[int, int, int]]:
    low, high = sorted_values[0], sorted_values[-1]
    width = max(1, math.ceil((high - low + 1) / buckets))
    counts: dict[int, int] = {}
    for value in sorted_values:
        counts[(value - low) // width] = counts.get((value - low) // width, 0) + 1
    return [(low + i * width, low + (i + 1) * width - 1, counts.get(i, 0))
            for i in range((high - low) // width + 1)]


class TokenCounter:
    """Counts a normalised row's tokens as training will see them (chat template included)."""

    name = "estimate (4 characters per token)"
    exact = False

    def count(self, row: dict[str, Any]) -> int:
        return max(1, round(len(render_text(row)) / 4))

    def count_prompt(self, prompt: str | list[dict[str, Any]]) -> int:
        """A prompt's tokens as generation starts from it (a chat prompt with the assistant's turn opened)."""
        text = prompt if isinstance(prompt, str) else render_text({"messages": prompt}) + "\nassistant: "
        return max(1, round(len(text) / 4))


def content_text(content: Any) -> str:
    if isinstance(content, list):  # parts: an image part counts as its one placeholder token
        return "".join(part["text"] if part["type"] == "text" else "<img>" for part in content)
    return str(content)


def render_text(row: dict[str, Any]) -> str:
    if "messages" in row:
        return "\n".join(f"{m['role']}: {content_text(m['content'])}" for m in row["messages"])
    if "prompt" in row:
        return row["prompt"] + row["completion"]
    return str(row["text"])
