"""GRPO's reward functions: one score per completion, as TRL's GRPOTrainer calls them.

GRPOTrainer calls each reward function with keyword arguments only: `prompts`, `completions` and
`completion_ids` (one entry per completion, each prompt repeated num_generations times), every other
column of the dataset's rows under its own name (the embedded prompts' `answer`), and
`trainer_state`, `log_extra` and `log_metric`. It wants back one float per completion (None for
"no score"). A completion is a string for plain-text prompts and a list of messages (the
assistant's turn, `[{"role": "assistant", "content": ...}]`) for conversational ones.

The training entry imports a reward by its dotted name (`--reward module.function`,
llmwizard.runner.rank.tasks.load_rewards); any importable function with this signature serves.
This module imports nothing heavy: rewards run inside the training loop on plain Python values.
"""

from __future__ import annotations

from typing import Any

from llmwizard.runner.rank.samples import content_text, is_exact

# The default reward for the embedded prompts (their `answer` column), by the name the plan records.
EXACT_ANSWER = f"{__name__}.exact_answer"


def completion_text(completion: Any) -> str:
    """A completion's text: the string itself, or the assistant turns of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        turns = [m for m in completion if isinstance(m, dict)]
        spoken = [m for m in turns if m.get("role", "assistant") == "assistant"] or turns
        return " ".join(content_text(m.get("content")) for m in spoken)
    return "" if completion is None else str(completion)


def exact_answer(completions: list[Any], answer: list[Any], **kwargs: Any) -> list[float]:
    """1.0 for a completion that is the row's `answer` (up to spaces around and between words, as
    the held-out samples are scored), else 0.0."""
    if len(answer) != len(completions):
        raise ValueError(f"exact_answer got {len(completions)} completions but {len(answer)} answers")
    return [1.0 if is_exact(completion_text(completion), str(expected)) else 0.0
            for completion, expected in zip(completions, answer, strict=True)]
