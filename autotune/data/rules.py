"""Google's dataset-size rules for tuning (Gemini / Vertex AI guidance).

| dataset | examples                      | epochs | learning rate | LoRA rank | max length |
| small   | < 1000 and avg < 500 tokens   | 20     | 2e-4          | 4         | 1024       |
| large   | >= 1000 or avg >= 500 tokens  | 10     | 1e-4          | 8         | 2048       |
"""

from __future__ import annotations

from dataclasses import dataclass

from llmwizard.autotune.data.dataset import DatasetProfile

SMALL_MAX_EXAMPLES = 1000
SMALL_MAX_AVG_TOKENS = 500


@dataclass(frozen=True)
class SizeRule:
    size: str
    epochs: int
    learning_rate: float
    lora_r: int
    max_length: int


RULES = {
    "small": SizeRule("small", epochs=20, learning_rate=2e-4, lora_r=4, max_length=1024),
    "large": SizeRule("large", epochs=10, learning_rate=1e-4, lora_r=8, max_length=2048),
}


def classify(profile: DatasetProfile) -> tuple[str, str]:
    """("small" | "large", why)."""
    if profile.num_examples < SMALL_MAX_EXAMPLES and profile.mean_tokens < SMALL_MAX_AVG_TOKENS:
        return "small", (f"{profile.num_examples} examples (< {SMALL_MAX_EXAMPLES}) averaging "
                         f"{profile.mean_tokens:.0f} tokens (< {SMALL_MAX_AVG_TOKENS})")
    if profile.num_examples >= SMALL_MAX_EXAMPLES:
        return "large", f"{profile.num_examples} examples (>= {SMALL_MAX_EXAMPLES})"
    return "large", f"examples average {profile.mean_tokens:.0f} tokens (>= {SMALL_MAX_AVG_TOKENS})"


def round_up(value: int, multiple: int = 64) -> int:
    return max(multiple, -(-value // multiple) * multiple)
