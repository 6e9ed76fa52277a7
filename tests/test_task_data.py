"""The data of the preference and reward tasks: each task's formats and row mapping (checked against
TRL's own prompt extraction and unpairing), the prompt's and responses' token lengths (checked
against what TRL's trainers tokenize with the embedded model), each refusal, and the embedded sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from llmwizard.autotune.data import preference
from llmwizard.autotune.data.dataset import (
    DatasetProfile,
    TokenCounter,
    detect_format,
    load_rows,
    normalize_rows,
    percentile,
    profile_dataset,
    resolve_dataset,
)
from llmwizard.autotune.data.tokens import counter_for
from llmwizard.autotune.embedded import (
    DATASET_PATH,
    EMBEDDED_DATASET,
    EMBEDDED_PAIRS,
    EMBEDDED_PROMPTS,
    EMBEDDED_UNPAIRED,
    ensure_embedded_model,
    task_data,
)
from llmwizard.autotune.errors import UserError

from tests.conftest import run_cli
from tests.refusals import assert_refused, flat


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


TEXT_PAIRS = [{"prompt": "12+7=", "chosen": "19", "rejected": "18"},
              {"prompt": "What is the capital of France?", "chosen": " Paris, a city on the Seine.",
               "rejected": " Lyon."}]
CHAT_PAIRS = [{"prompt": [user("12+7=")], "chosen": [assistant("19")], "rejected": [assistant("91")]},
              {"prompt": [{"role": "system", "content": "Answer briefly."}, user("Name a large ocean.")],
               "chosen": [assistant("The Pacific, the largest of all.")], "rejected": [assistant("Lake Geneva")]}]
IMPLICIT_PAIRS = [
    {"chosen": [user("12+7="), assistant("19")], "rejected": [user("12+7="), assistant("17")]},
    {"chosen": [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("4, the sum of two and two.")],
     "rejected": [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("5")]},
]


# Formats and row mapping, per task ------------------------------------------------------------

@pytest.mark.parametrize("task", ["dpo", "orpo"])
def test_pairs_as_text_or_chat_keep_their_shape(task):
    fmt, rows = normalize_rows(TEXT_PAIRS, task=task)
    assert fmt == "preference" and rows == TEXT_PAIRS
    fmt, rows = normalize_rows(CHAT_PAIRS, task=task)
    assert fmt == "preference" and rows == CHAT_PAIRS
    assert detect_format(["prompt", "chosen", "rejected", "id"], task=task)[0] == "preference"


def test_a_text_prompt_beside_chat_responses_becomes_the_users_turn():
    _, rows = normalize_rows([{"prompt": "12+7=", "chosen": [assistant("19")], "rejected": "18"}], task="dpo")
    assert rows == [{"prompt": [user("12+7=")], "chosen": [assistant("19")], "rejected": [assistant("18")]}]


def test_an_implicit_prompt_is_split_off_as_trls_extract_prompt_does():
    from trl.data_utils import extract_prompt, maybe_extract_prompt

    fmt, rows = normalize_rows(IMPLICIT_PAIRS, task="dpo")
    assert fmt == "preference"
    assert rows == [extract_prompt(row) for row in IMPLICIT_PAIRS]
    assert rows[1]["prompt"] == IMPLICIT_PAIRS[1]["chosen"][:3] and rows[1]["rejected"] == [assistant("5")]
    # A text `prompt` column beside whole conversations repeats the prompt: the turns hold it.
    repeated = [{"prompt": row["chosen"][-2]["content"], **row} for row in IMPLICIT_PAIRS]
    assert normalize_rows(repeated, task="orpo")[1] == [maybe_extract_prompt(row) for row in repeated]
    assert "extract_prompt" in preference.describe("dpo", IMPLICIT_PAIRS[0], rows)


def test_unpaired_rows_read_their_labels():
    given = [{"prompt": "12+7=", "completion": "19", "label": True},
             {"prompt": "12+8=", "completion": "21", "label": False},
             {"prompt": "1+1=", "completion": "2", "label": "true"},   # as a CSV holds it
             {"prompt": "1+2=", "completion": "4", "label": 0}]
    fmt, rows = normalize_rows(given, task="kto")
    assert fmt == "unpaired_preference"
    assert [row["label"] for row in rows] == [True, False, True, False]
    _, rows = normalize_rows([{"prompt": [user("12+7=")], "completion": "19", "label": True}], task="kto")
    assert rows == [{"prompt": [user("12+7=")], "completion": [assistant("19")], "label": True}]


@pytest.mark.parametrize("pairs", [TEXT_PAIRS, CHAT_PAIRS], ids=["text", "chat"])
def test_pairs_given_to_kto_are_unpaired_as_trl_does_and_the_profile_says_so(tmp_path, pairs):
    import datasets
    from trl.data_utils import unpair_preference_dataset

    fmt, rows = normalize_rows(pairs, task="kto")
    assert fmt == "unpaired_preference" and len(rows) == 2 * len(pairs)
    trl_rows = list(unpair_preference_dataset(datasets.Dataset.from_list(pairs)))
    key = json.dumps
    assert sorted(map(key, rows)) == sorted(map(key, trl_rows))
    assert [row["label"] for row in rows] == [True, False] * len(pairs)  # each pair's two rows side by side

    profile = profile_dataset(jsonl(tmp_path / "pairs.jsonl", pairs), TokenCounter(), task="kto")
    assert profile.num_examples == 4 and (profile.desirable_rows, profile.undesirable_rows) == (2, 2)
    assert "2 pairs unpaired into 4 KTO rows" in profile.note and "label true" in profile.note
    batch = preference.unpair_batch({key: [row[key] for row in normalize_rows(pairs, task="dpo")[1]]
                                     for key in ("prompt", "chosen", "rejected")})
    assert [dict(zip(batch, values)) for values in zip(*batch.values())] == rows


def test_implicit_pairs_given_to_kto_are_split_then_unpaired():
    _, rows = normalize_rows(IMPLICIT_PAIRS[:1], task="kto")
    assert rows == [{"prompt": [user("12+7=")], "completion": [assistant("19")], "label": True},
                    {"prompt": [user("12+7=")], "completion": [assistant("17")], "label": False}]


def test_prompt_rows_keep_every_other_column_for_the_rewards():
    given = [{"prompt": "12+7=", "answer": "19", "level": 1}, {"prompt": "1+1=", "answer": "2", "level": None}]
    fmt, rows = normalize_rows(given, task="grpo")
    assert fmt == "prompt_only" and rows == given
    _, rows = normalize_rows([{"prompt": [user("12+7=")], "answer": "19"}], task="grpo")
    assert rows == [{"prompt": [user("12+7=")], "answer": "19"}]


def test_question_and_answer_rows_become_a_prompt_and_its_answer():
    fmt, rows = normalize_rows([{"question": "12+7=", "answer": "19", "source": "gsm"}], task="grpo")
    assert fmt == "prompt_only"
    assert rows == [{"prompt": [user("12+7=")], "answer": "19", "source": "gsm"}]
    assert "`question` is the prompt" in preference.describe("grpo", ["question", "answer"], rows)


def test_a_completion_column_reaches_grpos_rewards_as_answer():
    _, rows = normalize_rows([{"prompt": "12+7=", "completion": "19"}], task="grpo")
    assert rows == [{"prompt": "12+7=", "answer": "19"}]
    assert "as `answer`" in preference.describe("grpo", ["prompt", "completion"], rows)


def test_sft_is_unchanged_and_points_preference_data_to_its_tasks():
    assert detect_format(["messages"])[0] == "messages"
    assert detect_format(["prompt", "completion", "label"])[0] == "prompt_completion"
    with pytest.raises(UserError) as err:
        detect_format(["prompt", "chosen", "rejected"])
    assert "found columns ['chosen', 'prompt', 'rejected']" in err.value.message
    assert "These columns fit --task dpo, orpo, kto, grpo." in err.value.fix
    assert resolve_dataset(None) == EMBEDDED_DATASET


# Lengths -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedded() -> tuple[Any, Any, Path]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = ensure_embedded_model()
    return AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory), directory


MIXED_CHAT = [{"prompt": [user(f"{a}+{b}=")], "chosen": [assistant(str(a + b) + " exactly" * (a % 3))],
               "rejected": [assistant(str(a + b + 1) + " maybe" * b)]} for a, b in [(1, 2), (17, 5), (30, 29), (4, 0)]]
MIXED_TEXT = [{"prompt": f"Add {a} and {b}:" + " please" * b, "chosen": f" {a + b}", "rejected": f" {a - b} or so"}
              for a, b in [(1, 2), (17, 5), (30, 29)]]


def _expected(lengths: dict[str, list[int]]) -> dict[str, int]:
    return {f"{name}_tokens_{stat}": (percentile(sorted(values), 99) if stat == "p99" else max(values))
            for name, values in lengths.items() for stat in ("p99", "max")}


@pytest.mark.parametrize("pairs", [MIXED_CHAT, MIXED_TEXT], ids=["chat", "text"])
def test_pair_lengths_are_what_trls_dpo_trainer_tokenizes(tmp_path, embedded, pairs):
    import datasets
    from trl import DPOConfig, DPOTrainer

    model, tokenizer, directory = embedded
    profile = profile_dataset(jsonl(tmp_path / "pairs.jsonl", pairs), counter_for(directory), task="dpo")
    args = DPOConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, max_length=None)
    rows = DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(normalize_rows(pairs,
                      task="dpo")[1]), processing_class=tokenizer).train_dataset
    lengths = {name: [len(row[f"{name}_ids"]) for row in rows] for name in ("prompt", "chosen", "rejected")}
    assert {key: getattr(profile, key) for key in _expected(lengths)} == _expected(lengths)
    whole = [len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) for row in rows]
    assert (profile.max_tokens, profile.p99_tokens) == (max(whole), percentile(sorted(whole), 99))
    assert profile.completion_tokens_max == 0 and profile.task == "dpo" and profile.exact_tokens
    assert len(set(lengths["chosen"])) > 1 and lengths["chosen"] != lengths["rejected"]  # the parts are apart


def test_unpaired_lengths_and_label_counts_are_what_trls_kto_trainer_reads(tmp_path, embedded):
    import datasets
    from trl import KTOConfig, KTOTrainer

    model, tokenizer, directory = embedded
    given = [{"prompt": [user(f"{a}+{b}=")], "completion": [assistant(str(a + b) + " ok" * a)], "label": a % 3 == 0}
             for a, b in [(1, 2), (3, 5), (6, 29), (4, 0), (9, 9)]]
    profile = profile_dataset(jsonl(tmp_path / "kto.jsonl", given), counter_for(directory), task="kto")
    args = KTOConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, max_length=None,
                     per_device_train_batch_size=2)
    rows = KTOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(normalize_rows(given,
                      task="kto")[1]), processing_class=tokenizer).train_dataset
    lengths = {name: [len(row[f"{name}_ids"]) for row in rows] for name in ("prompt", "completion")}
    assert {key: getattr(profile, key) for key in _expected(lengths)} == _expected(lengths)
    assert profile.max_tokens == max(len(row["prompt_ids"]) + len(row["completion_ids"]) for row in rows)
    assert (profile.desirable_rows, profile.undesirable_rows) == (sum(rows["label"]), 5 - sum(rows["label"])) == (3, 2)
    assert profile.chosen_tokens_max == 0 and profile.note == ""


def test_prompt_lengths_are_the_prompt_as_grpo_tokenizes_it(tmp_path, embedded):
    _, tokenizer, directory = embedded
    given = [{"prompt": [user("1" * n + "+2=")], "answer": "3"} for n in (1, 5, 20)]
    profile = profile_dataset(jsonl(tmp_path / "p.jsonl", given), counter_for(directory), task="grpo")
    lengths = [len(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"]) for row in given]
    assert (profile.prompt_tokens_max, profile.max_tokens, profile.format) == (max(lengths), max(lengths), "prompt_only")
    text = [{"prompt": "1" * n + "+2=", "answer": "3"} for n in (1, 5, 20)]
    profile = profile_dataset(jsonl(tmp_path / "t.jsonl", text), counter_for(directory), task="grpo")
    assert profile.prompt_tokens_max == max(len(tokenizer(row["prompt"])["input_ids"]) for row in text)
    assert profile.chosen_tokens_max == profile.completion_tokens_max == 0


def test_the_embedded_sets_lengths_with_the_embedded_tokenizer():
    counter = counter_for(ensure_embedded_model())
    dpo = profile_dataset(resolve_dataset(None, "dpo"), counter, task="dpo")
    # "<|user|>" 12+14= "<|assistant|>": one token per digit and sign; "38</s>": three.
    assert (dpo.prompt_tokens_max, dpo.chosen_tokens_max, dpo.rejected_tokens_max, dpo.max_tokens) == (8, 3, 3, 11)
    assert dpo.max_tokens == profile_dataset(EMBEDDED_DATASET, counter).max_tokens  # the SFT rows' length
    kto = profile_dataset(resolve_dataset(None, "kto"), counter, task="kto")
    assert (kto.desirable_rows, kto.undesirable_rows, kto.completion_tokens_max) == (450, 450, 3)
    grpo = profile_dataset(resolve_dataset(None, "grpo"), counter, task="grpo")
    assert grpo.max_tokens == grpo.prompt_tokens_max == 8


@pytest.mark.parametrize("task", ["dpo", "kto", "grpo"])
def test_the_four_characters_estimate_still_profiles_every_task(task):
    profile = profile_dataset(resolve_dataset(None, task), TokenCounter(), task=task)
    assert not profile.exact_tokens and profile.tokenizer.startswith("estimate")
    assert profile.prompt_tokens_max >= 1 and profile.max_tokens >= profile.prompt_tokens_max - 1
    assert (profile.chosen_tokens_max >= 1) == (task == "dpo") and (profile.completion_tokens_max >= 1) == (task == "kto")


def test_old_profiles_load_with_the_new_fields_defaulted():
    profile = profile_dataset(resolve_dataset(None, "kto"), TokenCounter(), task="kto")
    assert DatasetProfile.from_dict(profile.to_dict()) == profile
    old = {key: value for key, value in profile.to_dict().items()
           if not key.startswith(("prompt_", "chosen_", "rejected_", "completion_")) and
           key not in ("task", "desirable_rows", "undesirable_rows", "note")}
    loaded = DatasetProfile.from_dict(old)
    assert (loaded.task, loaded.prompt_tokens_max, loaded.desirable_rows, loaded.note) == ("sft", 0, 0, "")


# Refusals -------------------------------------------------------------------------------------

SFT_ROW = {"messages": [user("12+7="), assistant("19")]}
KTO_ROW = {"prompt": "12+7=", "completion": "19", "label": True}
PAIR_ROW = {"prompt": "12+7=", "chosen": "19", "rejected": "18"}

REFUSALS: list[tuple[str, str, list[Any], list[str]]] = [
    # (case, task, the file's lines, words the message and its fix must hold)
    ("SFT data for DPO", "dpo", [SFT_ROW],
     ["data.jsonl", "line 1", "--task dpo", "lacks `prompt`, `chosen` and `rejected`", "found columns ['messages']",
      "Add `prompt`, `chosen` and `rejected`", "--task sft", EMBEDDED_PAIRS]),
    ("unpaired data for ORPO", "orpo", [KTO_ROW],
     ["line 1", "--task orpo", "lacks `chosen` and `rejected`", "found columns ['completion', 'label', 'prompt']",
      "--task kto, grpo or sft"]),
    ("prompt and completion without a label for KTO", "kto", [{"prompt": "a", "completion": "b"}],
     ["--task kto", "lacks `label`", "found columns ['completion', 'prompt']", "Add `label`", "--task grpo or sft"]),
    ("chat messages for GRPO", "grpo", ["", SFT_ROW],
     ["line 2", "--task grpo", "lacks `prompt`", "found columns ['messages']", "--task sft", EMBEDDED_PROMPTS]),
    ("images for DPO", "dpo", [{**PAIR_ROW, "images": ["a.png"]}], ["line 1", "has images", "--task dpo", "text only"]),
    ("a label that is not true or false", "kto", [KTO_ROW, "", {**KTO_ROW, "label": "yes"}],
     ["line 3", "`label` is 'yes', not true or false", "--task kto", "Give `label` true"]),
    ("chosen the same as rejected", "dpo", [PAIR_ROW, {**PAIR_ROW, "rejected": "19"}],
     ["line 2", "`chosen` and `rejected` are the same response", "--task dpo", "Remove the row"]),
    ("an empty prompt", "grpo", [{"prompt": "a", "answer": "1"}, {"prompt": "  ", "answer": "2"}],
     ["line 2", "`prompt` is empty", "--task grpo"]),
    ("an empty chosen message", "orpo", [{**PAIR_ROW, "chosen": [assistant("")], "rejected": [assistant("18")]}],
     ["line 1", "`chosen's message 1` is empty", "--task orpo"]),
    ("a row without a column row 1 has", "dpo", [PAIR_ROW, PAIR_ROW, {"prompt": "1+1=", "chosen": "2"}],
     ["line 3", "lacks the column 'rejected'", "--task dpo"]),
    ("text pairs without a prompt", "dpo", [{"chosen": "12+7=19", "rejected": "12+7=18"}],
     ["line 1", "text without a `prompt` column", "Add a `prompt` column"]),
    ("conversations that share no turn", "kto",
     [{"chosen": [user("a"), assistant("b")], "rejected": [user("c"), assistant("d")]}],
     ["line 1", "share no prompt", "--task kto"]),
    ("conversations that part at the user's turn", "dpo", [{
        "chosen": [user("a"), assistant("b"), user("c"), assistant("d")],
        "rejected": [user("a"), assistant("b"), user("x"), assistant("d")]}],
     ["line 1", "part at a user turn", "--task dpo"]),
    ("a GRPO prompt that ends with the assistant", "grpo", [{"prompt": [user("a"), assistant("b")], "answer": "c"}],
     ["line 1", "`prompt` ends with an assistant turn", "--task grpo"]),
    ("completion and answer both given to GRPO", "grpo", [{"prompt": "a", "completion": "b", "answer": "b"}],
     ["line 1", "both `completion` and `answer`", "Drop the `completion` column"]),
]


@pytest.mark.parametrize("case, task, lines, words", REFUSALS, ids=[case[0] for case in REFUSALS])
def test_data_that_does_not_fit_the_task_is_refused_naming_task_columns_and_row(tmp_path, case, task, lines, words):
    source = resolve_dataset(jsonl(tmp_path / "data.jsonl", lines), task=task)
    with pytest.raises(UserError) as err:
        profile_dataset(source, TokenCounter(), task=task)
    assert err.value.title == "Dataset" and err.value.fix
    message = flat(str(err.value))
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


def test_the_cli_refuses_data_that_does_not_fit_the_task_with_exit_2(tmp_path):
    path = jsonl(tmp_path / "sft.jsonl", [SFT_ROW])
    assert_refused(run_cli("plan", "--task", "kto", "--dataset", path, cwd=tmp_path, timeout=300),
                   ["sft.jsonl: line 1 does not fit --task kto", "lacks `prompt`, `completion` and `label`",
                    "found columns ['messages']", "--task sft", EMBEDDED_UNPAIRED])


def test_a_hub_datasets_columns_are_refused_by_detect_format_naming_the_task():
    with pytest.raises(UserError) as err:
        detect_format(["text"], task="kto")
    message = flat(str(err.value))
    assert "row 1 does not fit --task kto" in message and "found columns ['text']" in message
    assert "--task sft" in message


# The embedded sets -----------------------------------------------------------------------------

def test_the_shipped_sets_are_what_the_generator_makes(tmp_path):
    written = task_data.generate_task_data(tmp_path)
    for path in written:
        assert path.read_bytes() == (task_data.DATA_DIR / path.name).read_bytes(), path.name
    assert set(task_data.TASK_DATASET_PATHS) == {EMBEDDED_PAIRS, EMBEDDED_UNPAIRED, EMBEDDED_PROMPTS}


def test_each_task_defaults_to_its_embedded_set_with_one_row_per_bundled_sum():
    sums = [json.loads(line)["messages"] for line in DATASET_PATH.read_text().splitlines()]
    defaults = {task: resolve_dataset(None, task) for task in ("sft", "dpo", "orpo", "kto", "grpo")}
    assert defaults == {"sft": EMBEDDED_DATASET, "dpo": EMBEDDED_PAIRS, "orpo": EMBEDDED_PAIRS,
                        "kto": EMBEDDED_UNPAIRED, "grpo": EMBEDDED_PROMPTS}
    for task, fmt in (("dpo", "preference"), ("kto", "unpaired_preference"), ("grpo", "prompt_only")):
        found, rows = normalize_rows(load_rows(defaults[task]), defaults[task], task=task)
        assert found == fmt and len(rows) == len(sums)
        # The SFT data's order, so the held-out split holds the same sums as an SFT run's.
        assert [row["prompt"] for row in rows] == [messages[:1] for messages in sums]
    pairs = normalize_rows(load_rows(EMBEDDED_PAIRS), EMBEDDED_PAIRS, task="dpo")[1]
    for row, messages in zip(pairs, sums):
        a, b = (int(x) for x in row["prompt"][0]["content"].removesuffix("=").split("+"))
        assert row["chosen"] == [messages[1]] == [assistant(str(a + b))]
        wrong = int(row["rejected"][0]["content"])
        assert wrong != a + b and wrong >= 0
        assert wrong in {a + b + 1, a + b - 1, a + b + 10, a + b - 10, int(str(a + b)[::-1])}
    assert {1, 10} <= {abs(int(r["rejected"][0]["content"]) - int(r["chosen"][0]["content"])) for r in pairs}
    unpaired = normalize_rows(load_rows(EMBEDDED_UNPAIRED), EMBEDDED_UNPAIRED, task="kto")[1]
    assert sum(row["label"] for row in unpaired) == len(unpaired) // 2
    for row, pair in zip(unpaired, pairs):
        assert row["completion"] == (pair["chosen"] if row["label"] else pair["rejected"])
    prompts = normalize_rows(load_rows(EMBEDDED_PROMPTS), EMBEDDED_PROMPTS, task="grpo")[1]
    assert [row["answer"] for row in prompts] == [pair["chosen"][0]["content"] for pair in pairs]


def test_answer_of_reads_a_completion_as_the_exact_answer_check_does():
    assert task_data.answer_of(" 19 \n") == "19"
    assert task_data.answer_of([assistant(" 1 9")]) == "1 9"
    assert task_data.is_exact_answer([assistant("19 ")], "19")
    assert not task_data.is_exact_answer("19 or 18", "19") and not task_data.is_exact_answer("191", "19")


# The rows train -------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["dpo", "orpo", "kto", "grpo"])
def test_trls_trainer_takes_a_step_on_the_tasks_embedded_rows(tmp_path, embedded, task):
    """The rows as normalize_rows gives them go into the task's TRL trainer as they are; GRPO's
    reward reads the `answer` column through answer_of."""
    import datasets
    import trl
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model, tokenizer, _ = embedded
    source = resolve_dataset(None, task)
    rows = normalize_rows(load_rows(source)[:8], source, task=task)[1]
    common = {"output_dir": str(tmp_path), "report_to": "none", "use_cpu": True, "max_steps": 1,
              "per_device_train_batch_size": 4, "save_strategy": "no"}
    seen: list[list[str]] = []

    def exact_answer(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
        seen.append(answer)
        return [float(task_data.is_exact_answer(c, a)) for c, a in zip(completions, answer)]

    config, trainer, extra = {
        "dpo": (trl.DPOConfig, trl.DPOTrainer, {}), "kto": (trl.KTOConfig, trl.KTOTrainer, {}),
        "orpo": (ORPOConfig, ORPOTrainer, {}),
        "grpo": (trl.GRPOConfig, trl.GRPOTrainer, {"reward_funcs": exact_answer}),
    }[task]
    settings = {"num_generations": 2, "max_completion_length": 4} if task == "grpo" else {}
    result = trainer(model=model, args=config(**common, **settings), train_dataset=datasets.Dataset.from_list(rows),
                     processing_class=tokenizer, **extra).train()
    assert result.global_step == 1
    if task == "grpo":
        assert seen and all(answer.isdigit() for answer in seen[0])
