"""The rows of the preference and reward tasks: which columns each task reads, how rows map to the
shape TRL's trainer takes, and their token lengths with the prompt and the responses apart.

- DPO and ORPO read pairs ("preference"): `prompt`, `chosen`, `rejected`, all text or all chat
  messages. An implicit prompt (only `chosen` and `rejected` conversations, which open with the
  same turns) is split off as TRL's `extract_prompt` does: the turns before the first that differs.
- KTO reads unpaired rows ("unpaired_preference"): `prompt`, `completion` and a `label` (true: a
  desirable completion). Pairs are unpaired as TRL's `unpair_preference_dataset` does: the chosen
  response becomes a row labelled true, the rejected one a row labelled false.
- GRPO reads prompts ("prompt_only"): `prompt`, text or chat messages; every other column goes on
  to the reward functions (an `answer`, say). `question`/`answer` rows become a user prompt and
  their `answer`.

Rows come out as the trainers read them: text stays text, chat stays chat; a text prompt beside a
chat response becomes a user turn (a text response, an assistant turn). Images are refused: these
tasks train on text here.
"""

from __future__ import annotations


from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from llmwizard.autotune.embedded import EMBEDDED_DATASET, EMBEDDED_PAIRS, EMBEDDED_PROMPTS, EMBEDDED_UNPAIRED
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.schema import DatasetFormat, Task

if TYPE_CHECKING:
    from llmwizard.autotune.data.dataset import TokenCounter

Row = dict[str, Any]
Converter = Callable[[Row], Row]

TASKS: tuple[Task, ...] = ("sft", "dpo", "orpo", "kto", "grpo")
TASK_FORMATS: dict[Task, DatasetFormat] = {
    "dpo": "preference", "orpo": "preference", "kto": "unpaired_preference", "grpo": "prompt_only",
}
DEFAULT_DATASETS: dict[Task, str] = {
    "sft": EMBEDDED_DATASET, "dpo": EMBEDDED_PAIRS, "orpo": EMBEDDED_PAIRS, "kto": EMBEDDED_UNPAIRED,
    "grpo": EMBEDDED_PROMPTS,
}
# What each task reads, in words, and the columns it names when they are missing.
_READS: dict[Task, str] = {
    "dpo": "pairs: `prompt`, `chosen` and `rejected` (text or chat messages; or only `chosen` and `rejected` "
           "conversations that open with the same prompt turns)",
    "kto": "`prompt`, `completion` and a true/false `label` (or pairs: `prompt`, `chosen`, `rejected`)",
    "grpo": "`prompt` (text or chat messages) and any columns the reward reads, e.g. `answer` "
            "(or `question` + `answer`)",
}
_READS["orpo"] = _READS["dpo"]
_COLUMNS: dict[Task, tuple[str, ...]] = {
    "dpo": ("prompt", "chosen", "rejected"), "orpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"), "grpo": ("prompt",),
}
_ROLES = ("system", "user", "assistant", "tool")
_LABELS = {"true": True, "false": False, "1": True, "0": False}


class RowProblem(ValueError):
    """A value in a row that the task cannot train on, with what to do about it."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def fitting_tasks(columns: Iterable[str]) -> list[Task]:
    """The preference and reward tasks whose columns the data has (SFT's are dataset.py's)."""
    cols = set(columns)
    fits: set[Task] = set()
    if {"chosen", "rejected"} <= cols:
        fits |= {"dpo", "orpo", "kto"}
    if {"prompt", "completion", "label"} <= cols:
        fits.add("kto")
    if "prompt" in cols or {"question", "answer"} <= cols:
        fits.add("grpo")
    return [task for task in TASKS if task in fits]


def detect(columns: Iterable[str], task: Task, *, where: str = "row 1", source: str = "The dataset",
           sft_fits: bool = False) -> tuple[DatasetFormat, Converter]:
    """The format `task` reads the columns as, and the row function that maps a row to it. For KTO
    and pairs, the function gives the checked pair; `normalize` (or `unpair_batch`, or KTOTrainer
    itself) unpairs it. `where`: the row the columns are from; `sft_fits`: whether --task sft
    reads them (named in the refusal's fix)."""
    cols = set(columns)
    if cols & {"images", "image"}:
        raise UserError(f"{source}: {where} has images (column `{'images' if 'images' in cols else 'image'}`), "
                        f"but --task {task} trains on text only here.", title="Dataset",
                        fix="Drop the images column to train on the text, or use --task sft for vision-language data.")
    paired = {"chosen", "rejected"} <= cols
    if task in ("dpo", "orpo") and paired:
        return "preference", _pair if "prompt" in cols else _implicit
    if task == "kto":
        if {"prompt", "completion", "label"} <= cols:
            return "unpaired_preference", _unpaired
        if paired:
            return "unpaired_preference", _pair if "prompt" in cols else _implicit
    if task == "grpo":
        if "prompt" in cols:
            return "prompt_only", _prompt_only
        if {"question", "answer"} <= cols:
            return "prompt_only", _question
    missing = [name for name in _COLUMNS[task] if name not in cols]
    if task in ("dpo", "orpo") and "prompt" in cols:
        missing = [name for name in ("chosen", "rejected") if name not in cols]
    others = [other for other in fitting_tasks(cols) if other != task] + (["sft"] if sft_fits else [])
    fix = f"Add {_listed(missing)} to every row"
    if others:
        fix += f"; or pass --task {_listed(others, quote=False, word='or')}, which these columns fit"
    fix += f"; or leave --dataset out to try --task {task} on {DEFAULT_DATASETS[task]}."
    raise UserError(f"{source}: {where} does not fit --task {task}: it lacks {_listed(missing)}; found columns "
                    f"{sorted(cols) or 'none'}. --task {task} reads {_READS[task]}.", title="Dataset", fix=fix)


def normalize(rows: list[Row], task: Task, source: str, where: Callable[[int], str],
              sft_fits: bool = False) -> tuple[DatasetFormat, list[Row]]:
    """Every row mapped to `task`'s format (pairs unpaired for KTO), naming the first bad one."""
    fmt, convert = detect(rows[0].keys(), task, where=where(1), source=source, sft_fits=sft_fits)
    out = []
    for number, row in enumerate(rows, 1):
        try:
            out.append(convert(row))
        except RowProblem as exc:
            raise UserError(f"{source}: {where(number)}: {exc} (--task {task}).", title="Dataset",
                            fix=exc.fix) from None
        except KeyError as exc:
            raise UserError(f"{source}: {where(number)} lacks the column {exc} that row 1 has (--task {task}).",
                            title="Dataset", fix=f"Give every row the same columns: {_READS[task]}.") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{source}: {where(number)} does not match the {fmt} rows of --task {task} ({exc}).",
                            title="Dataset", fix=f"Make every row hold {_READS[task]}.") from None
    if task == "kto" and "chosen" in out[0]:
        out = unpair_rows(out)
    return fmt, out


def describe(task: Task, columns: Iterable[str], rows: list[Row]) -> str:
    """How the data was read for the task, when it was more than taking its columns: the profile's
    note (an implicit prompt split off, pairs unpaired, columns renamed, one KTO label only)."""
    cols = set(columns)
    notes = []
    if task in ("dpo", "orpo", "kto") and {"chosen", "rejected"} <= cols and "prompt" not in cols:
        notes.append("the prompt is the turns `chosen` and `rejected` open with (as TRL's extract_prompt splits it)")
    if task == "kto" and {"chosen", "rejected"} <= cols and not {"completion", "label"} <= cols:
        notes.append(f"{len(rows) // 2} pairs unpaired into {len(rows)} KTO rows (as TRL's unpair_preference_dataset "
                     "does): each chosen response a desirable row (label true), each rejected one an undesirable "
                     "row (label false)")
    if task == "kto" and rows:
        desirable = sum(1 for row in rows if row["label"])
        if desirable in (0, len(rows)):
            notes.append(f"every row is {'desirable' if desirable else 'undesirable'} (label {bool(desirable)}): "
                         "KTO weighs both kinds, and learns less from one alone")
    if task == "grpo" and "prompt" not in cols:
        notes.append("`question` is the prompt (a user turn); `answer` goes to the reward functions")
    if task == "grpo" and "completion" in cols:
        notes.append("`completion` goes to the reward functions as `answer` (TRL's `completion` is the generated "
                     "text)")
    return "; ".join(notes)


def unpair_rows(pairs: list[Row]) -> list[Row]:
    """KTO rows from pairs: the chosen response labelled true, then the rejected one labelled false."""
    return [{"prompt": pair["prompt"], "completion": pair[side], "label": side == "chosen"}
            for pair in pairs for side in ("chosen", "rejected")]


def unpair_batch(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """`unpair_rows` for `datasets.Dataset.map(unpair_batch, batched=True, remove_columns=...)`."""
    rows = unpair_rows([dict(zip(batch, values)) for values in zip(*batch.values())])
    return {key: [row[key] for row in rows] for key in ("prompt", "completion", "label")}


def measure(rows: list[Row], task: Task, counter: TokenCounter,
            step: int) -> tuple[list[int], dict[str, list[int]], dict[str, Any]]:
    """Over every `step`-th row: the ascending sequence lengths one forward sees (prompt + the
    longer response; prompt + completion for KTO; the prompt for GRPO), the ascending lengths of
    each part apart ("prompt", and "chosen" and "rejected", or KTO's "completion"), and the
    profile's other task fields (KTO's label counts over every row)."""
    sample = rows[::step]
    prompts = [counter.count_prompt(row["prompt"]) for row in sample]
    fields: dict[str, Any] = {"task": task}
    if task == "grpo":
        return sorted(prompts), {"prompt": sorted(prompts)}, fields
    sides = ("completion",) if task == "kto" else ("chosen", "rejected")
    whole = {side: [counter.count(_sequence(row, side)) for row in sample] for side in sides}
    # TRL's response starts where the tokenized prompt ends (its common prefix with the whole).
    parts = {"prompt": sorted(prompts), **{side: sorted(max(1, total - prompt) for total, prompt
                                                        in zip(whole[side], prompts)) for side in sides}}
    if task == "kto":
        fields["desirable_rows"] = sum(1 for row in rows if row["label"])
        fields["undesirable_rows"] = len(rows) - fields["desirable_rows"]
    return sorted(max(lengths) for lengths in zip(*whole.values())), parts, fields


def _sequence(row: Row, side: str) -> Row:
    """The prompt and one response as the token counter reads a whole sequence."""
    if isinstance(row["prompt"], list):
        return {"messages": row["prompt"] + row[side]}
    return {"prompt": row["prompt"], "completion": row[side]}


# Row functions. Each returns the row in the task's shape or raises RowProblem (a bad value, named
# with its fix), KeyError (a missing column) or another ValueError.

def _pair(row: Row) -> Row:
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    if isinstance(prompt, str) and isinstance(chosen, list) and isinstance(rejected, list) and chosen \
            and isinstance(chosen[0], dict) and chosen[0].get("role") != "assistant":
        # The conversations hold the prompt too (and the prompt column repeats it): split it off
        # as TRL's maybe_extract_prompt does.
        return _implicit(row)
    if any(isinstance(value, list) for value in (prompt, chosen, rejected)):
        out = {"prompt": _prompt_turns(prompt), "chosen": _response_turns(chosen, "chosen"),
               "rejected": _response_turns(rejected, "rejected")}
    else:
        out = {"prompt": _text(prompt, "prompt"), "chosen": _text(chosen, "chosen"),
               "rejected": _text(rejected, "rejected")}
    return _differs(out)


def _implicit(row: Row) -> Row:
    chosen, rejected = row["chosen"], row["rejected"]
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise RowProblem("`chosen` and `rejected` are text without a `prompt` column, so the prompt cannot be told "
                         "from the response", "Add a `prompt` column (then `chosen` and `rejected` hold the responses "
                         "alone), or give `chosen` and `rejected` as chat messages that open with the prompt's turns.")
    chosen, rejected = _turns(chosen, "chosen"), _turns(rejected, "rejected")
    shared = shared_turns(chosen, rejected)
    out = {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}
    if not out["prompt"]:
        raise RowProblem("`chosen` and `rejected` differ from their first turn, so they share no prompt",
                         "Open `chosen` and `rejected` with the same prompt turns (the user's message), or add a "
                         "`prompt` column.")
    if out["chosen"][0]["role"] != "assistant" or out["rejected"][0]["role"] != "assistant":
        raise RowProblem(f"`chosen` and `rejected` part at a {out['chosen'][0]['role']} turn, not at the assistant's "
                         "answer", "Make `chosen` and `rejected` the same conversation up to the assistant's answer, "
                         "which is what they differ in.")
    _prompt_turns(out["prompt"])
    return _differs(out)


def shared_turns(chosen: list[Row], rejected: list[Row]) -> int:
    """Where TRL's extract_prompt splits two conversations: at the first turn that differs (the
    last turn when none does before the shorter one ends)."""
    shortest = min(len(chosen), len(rejected))
    return next((i for i in range(shortest) if chosen[i] != rejected[i]), shortest - 1)


def _differs(out: Row) -> Row:
    if out["chosen"] == out["rejected"]:
        raise RowProblem("`chosen` and `rejected` are the same response, so the pair prefers nothing",
                         "Remove the row, or give it the response that is worse as `rejected`.")
    return out


def _unpaired(row: Row) -> Row:
    prompt, completion = row["prompt"], row["completion"]
    label = _label(row["label"])
    if isinstance(prompt, list) or isinstance(completion, list):
        return {"prompt": _prompt_turns(prompt), "completion": _response_turns(completion, "completion"),
                "label": label}
    return {"prompt": _text(prompt, "prompt"), "completion": _text(completion, "completion"), "label": label}


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LABELS:  # CSV holds no booleans
        return _LABELS[value.strip().lower()]
    raise RowProblem(f"`label` is {value!r}, not true or false",
                     "Give `label` true (a desirable completion) or false (an undesirable one); 1 and 0, and the "
                     "words true and false in a CSV, read the same.")


def _prompt_only(row: Row) -> Row:
    out = dict(row)
    out["prompt"] = _prompt_turns(row["prompt"], text_ok=True)
    if "completion" in row:
        if "answer" in row:
            raise RowProblem("the row has both `completion` and `answer`; TRL's GRPO keeps `completion` for the "
                             "generated text, so the reward functions would never see it",
                             "Drop the `completion` column, or rename it to a name the reward reads.")
        out["answer"] = out.pop("completion")
    return out


def _question(row: Row) -> Row:
    out = {key: value for key, value in row.items() if key != "question"}
    out["prompt"] = [{"role": "user", "content": _text(row["question"], "question")}]
    out["answer"] = row["answer"]
    return out


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RowProblem(f"`{name}` is {type(value).__name__} {_short(value)}, not text",
                         f"Give `{name}` as text, or as a list of chat messages ({{role, content}}).")
    if not value.strip():
        raise RowProblem(f"`{name}` is empty", f"Give every row a non-empty `{name}`, or remove the row.")
    return value


def _turns(value: Any, name: str) -> list[Row]:
    """Chat messages, each {role, content} with a known role and non-empty text."""
    if not isinstance(value, list):
        raise RowProblem(f"`{name}` is {type(value).__name__} {_short(value)} where row 1 has chat messages",
                         f"Give `{name}` as a list of {{role, content}} messages in every row, as row 1 does.")
    if not value:
        raise RowProblem(f"`{name}` is an empty list of messages", f"Give every row's `{name}` at least one message.")
    clean = []
    for turn, message in enumerate(value, 1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RowProblem(f"message {turn} of `{name}` is not a {{role, content}} object",
                             "Write each message as {\"role\": ..., \"content\": ...}.")
        if message["role"] not in _ROLES:
            raise RowProblem(f"message {turn} of `{name}` has the unknown role {message['role']!r}",
                             f"Use one of the roles {', '.join(_ROLES)}.")
        clean.append({"role": message["role"], "content": _text(message["content"], f"{name}'s message {turn}")})
    return clean


def _prompt_turns(value: Any, text_ok: bool = False) -> Any:
    """A chat prompt (a text prompt beside chat responses becomes a user turn): its last turn must
    leave the answer to the assistant. `text_ok`: text stays text (GRPO's prompt)."""
    if isinstance(value, str):
        text = _text(value, "prompt")
        return text if text_ok else [{"role": "user", "content": text}]
    turns = _turns(value, "prompt")
    if turns[-1]["role"] == "assistant":
        raise RowProblem("`prompt` ends with an assistant turn, so the response would follow the assistant's own",
                         "End the prompt with the user's turn; the response is the assistant's answer to it.")
    return turns


def _response_turns(value: Any, name: str) -> list[Row]:
    """A chat response (text beside a chat prompt becomes an assistant turn), opening with the assistant."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": _text(value, name)}]
    turns = _turns(value, name)
    if turns[0]["role"] != "assistant":
        raise RowProblem(f"`{name}` opens with a {turns[0]['role']} turn, not the assistant's answer",
                         f"Put the prompt's turns in `prompt` and the assistant's answer in `{name}`.")
    return turns


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _listed(names: Sequence[str], quote: bool = True, word: str = "and") -> str:
    names = [f"`{name}`" if quote else name for name in names]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + f" {word} " + names[-1]
