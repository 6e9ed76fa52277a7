"""The embedded data of the preference and reward tasks, made from the bundled sums.

Each set is generated from `data/arithmetic.jsonl` row by row, in its order, and shipped beside it
(`generate_task_data()` reproduces the files byte for byte):

- `embedded:arithmetic-pairs` (DPO, ORPO): the prompt "12+7=" as a user turn, the chosen answer as
  the SFT data writes it ("19") and a rejected near miss (off by one, the digits swapped, ten too
  many, or the carry forgotten).
- `embedded:arithmetic-unpaired` (KTO): one row per sum, the right answer (label true) and the
  near miss (label false) taking turns, so the labels are balanced.
- `embedded:arithmetic-prompts` (GRPO): the prompt and an `answer` column, which the exact-answer
  reward compares with each completion (`answer_of`).

Every set keeps one row per sum in the SFT data's order, so a run's held-out split (the same
count, the same seed) holds the same sums as an SFT run's: no task trains on what is scored.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from llmwizard.autotune.embedded import DATA_DIR, DATASET_PATH, EMBEDDED_PAIRS, EMBEDDED_PROMPTS, EMBEDDED_UNPAIRED

PAIRS_PATH = DATA_DIR / "arithmetic-pairs.jsonl"
UNPAIRED_PATH = DATA_DIR / "arithmetic-unpaired.jsonl"
PROMPTS_PATH = DATA_DIR / "arithmetic-prompts.jsonl"
TASK_DATASET_PATHS: dict[str, Path] = {
    EMBEDDED_PAIRS: PAIRS_PATH, EMBEDDED_UNPAIRED: UNPAIRED_PATH, EMBEDDED_PROMPTS: PROMPTS_PATH,
}
_SEED = 1234


def sums(path: Path = DATASET_PATH) -> list[tuple[int, int]]:
    """The bundled sums (a, b) in the file's order."""
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            question = json.loads(line)["messages"][0]["content"]
            a, b = question.removesuffix("=").split("+")
            found.append((int(a), int(b)))
    return found


def near_miss(a: int, b: int, rng: random.Random) -> str:
    """A wrong answer close to a+b, as a careless adder writes it: off by one, the digits swapped,
    ten too many, or the carry of the ones forgotten. Never the right answer, never negative."""
    right = a + b
    candidates = {right + 1, right - 1, right + 10}
    swapped = str(right)[::-1]
    if len(swapped) > 1 and not swapped.startswith("0"):
        candidates.add(int(swapped))
    if a % 10 + b % 10 >= 10:
        candidates.add(right - 10)  # the carry of the ones forgotten
    choices = sorted(value for value in candidates if value >= 0 and value != right)
    return str(rng.choice(choices))


def _prompt(a: int, b: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{a}+{b}="}]


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def pairs(seed: int = _SEED) -> list[dict[str, Any]]:
    """DPO/ORPO rows: prompt, the right answer chosen, a near miss rejected."""
    rng = random.Random(seed)
    return [{"prompt": _prompt(a, b), "chosen": _answer(str(a + b)), "rejected": _answer(near_miss(a, b, rng))}
            for a, b in sums()]


def unpaired(seed: int = _SEED) -> list[dict[str, Any]]:
    """KTO rows: the right answer (label true) and a near miss (label false) in turn. The near
    misses are the pairs' rejected answers for the same sums."""
    rng = random.Random(seed)
    rows = []
    for index, (a, b) in enumerate(sums()):
        wrong = near_miss(a, b, rng)
        good = index % 2 == 0
        rows.append({"prompt": _prompt(a, b), "completion": _answer(str(a + b) if good else wrong), "label": good})
    return rows


def prompts() -> list[dict[str, Any]]:
    """GRPO rows: the prompt, and the `answer` the reward checks."""
    return [{"prompt": _prompt(a, b), "answer": str(a + b)} for a, b in sums()]


def generate_task_data(directory: Path = DATA_DIR) -> list[Path]:
    """Write the three sets into `directory` (the shipped files when left out); their paths."""
    written = []
    for name, rows in (("arithmetic-pairs.jsonl", pairs()), ("arithmetic-unpaired.jsonl", unpaired()),
                       ("arithmetic-prompts.jsonl", prompts())):
        path = directory / name
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        written.append(path)
    return written


def answer_of(completion: str | list[dict[str, Any]]) -> str:
    """The answer a completion gives, as the exact-answer checks compare it: its text with the
    spaces around and between words evened out (decoding may differ there; the answer may not).
    A conversational completion (TRL passes a list of messages) reads as its turns' text."""
    if isinstance(completion, list):
        completion = " ".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return " ".join(str(completion).split())


def is_exact_answer(completion: str | list[dict[str, Any]], answer: str) -> bool:
    """Whether the completion gives exactly `answer` (a row's `answer` column)."""
    return answer_of(completion) == answer_of(answer)


if __name__ == "__main__":  # regenerate the shipped files: python -m llmwizard.autotune.embedded.task_data
    for written_path in generate_task_data():
        print(written_path)
