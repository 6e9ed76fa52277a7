"""The planner's steps for preference and reward tasks: DPO, ORPO, KTO and GRPO (docs/tasks.md).

Each returns its value with its reason (a `Decision`), as llmwizard.autotune.plan.plan_steps does
for what every task shares. The published defaults each step starts from, with their sources:

- DPO: beta 0.1 (Rafailov et al. 2023, "Direct Preference Optimization", the value of its
  experiments; TRL's DPOConfig default). Learning rate an order of magnitude below SFT's (Tunstall
  et al. 2023, "Zephyr": 5e-7 for full DPO after SFT at 2e-5; TRL's DPOConfig default 1e-6).
- KTO: beta 0.1 (Ethayarajh et al. 2024, "KTO"; TRL's KTOConfig default), the same learning rates
  as DPO (the paper's 5e-7 to 5e-6 full).
- ORPO: lambda (TRL's beta) 0.1 (Hong et al. 2024, "ORPO"; TRL's default). ORPO adds its
  odds-ratio term to the SFT loss and starts from a base model, so it keeps SFT's learning rate
  (the paper's 8e-6 for a 7B model with full fine-tuning).
- GRPO: 8 completions per prompt, temperature 1.0 and beta 0 (no KL term, no reference model):
  TRL's GRPOConfig defaults, after Liu et al. 2025 ("Understanding R1-Zero-Like Training", beta 0)
  and Shao et al. 2024 ("DeepSeekMath", the group-relative advantage). Learning rate a tenth of
  SFT's (TRL's default 1e-6 for full fine-tuning). Completions of at most 512 tokens (TRL's default).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from llmwizard.autotune.data.dataset import DatasetProfile
from llmwizard.autotune.data.rules import round_up
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import Goals
from llmwizard.autotune.model.model_types import ModelSpec
from llmwizard.autotune.plan import TaskSettings
from llmwizard.autotune.plan.plan_steps import DEFAULT_EFFECTIVE_BATCH, Decision
from llmwizard.autotune.schema import MAX_BATCH, Method, Reference, Task
from llmwizard.autotune.train_setup import TrainSetup

# The goals only a preference or reward task reads (refused under SFT rather than ignored).
TASK_KEYS = ("beta", "reference", "num_generations", "max_completion_length", "temperature", "rewards")
DEFAULT_BETA = {"dpo": 0.1, "kto": 0.1, "orpo": 0.1, "grpo": 0.0}
BETA_SOURCE = {
    "dpo": "the DPO paper's value and TRL's default",
    "kto": "the KTO paper's value and TRL's default",
    "orpo": "ORPO's lambda in its paper and TRL's default",
    "grpo": "TRL's default: no KL term, so no reference model (Liu et al. 2025 found it unneeded)",
}
# How far below SFT's rate each task trains: preference tuning moves a model that already answers
# (DPO, KTO, GRPO); ORPO is SFT with an odds-ratio term and keeps SFT's rate.
LR_FACTOR = {"dpo": 0.1, "kto": 0.1, "grpo": 0.1, "orpo": 1.0}
DEFAULT_GENERATIONS = 8
DEFAULT_TEMPERATURE = 1.0
DEFAULT_COMPLETION = 512
# The embedded warmed-up model answers the sums right when sampled at 1.0 (40/40 held out), so every
# group would score alike and teach nothing; at 2.0 it samples 73% right answers (8 per prompt).
EMBEDDED_TEMPERATURE = 2.0
# The embedded arithmetic answers are one to three digits and an end token.
EMBEDDED_COMPLETION = 8
# GRPO's default reward: the exact answer (the prompt rows' `answer` column).
EXACT_ANSWER = "llmwizard.runner.rank.rewards.exact_answer"
TASK_WORDS = {
    "sft": "supervised fine-tuning: the loss of the responses given",
    "dpo": "DPO: raise the chosen response's likelihood over the rejected one's, relative to a reference model",
    "orpo": "ORPO: SFT on the chosen response plus an odds-ratio penalty on the rejected one, no reference model",
    "kto": "KTO: desirable and undesirable responses, each weighed against a reference model",
    "grpo": "GRPO: sample a group of completions per prompt, score them with the reward, and move towards the "
            "better ones",
}


def task(goals: Goals) -> Decision[Task]:
    name = goals.task_name
    return Decision(name, f"{TASK_WORDS[name]}" + (f" ({goals.origin('task')})" if goals.task else " (the default)"))


def learning_rate(goals: Goals, lr: float, reason: str, model: ModelSpec | None = None) -> Decision[float]:
    """The task's rate from the SFT step's (`lr`, `reason`): a tenth for DPO, KTO and GRPO, except
    on the embedded toy model, whose few weights move visibly only at the SFT rate."""
    name = goals.task_name
    factor = LR_FACTOR.get(name, 1.0)
    if name == "sft" or "learning_rate" in goals.explicit or goals.learning_rate is not None or factor == 1.0:
        return Decision(lr, reason)
    if model is not None and model.source == "embedded":
        return Decision(lr, f"{reason}; the SFT rate, not a tenth of it as for pretrained models: the embedded "
                            "toy model's margins and rewards move visibly only at this rate")
    return Decision(lr * factor, f"{lr * factor:g}: a tenth of the SFT rate for {name.upper()} ({reason}); "
                                 "preference tuning moves a model that already answers, and published runs use an "
                                 "order of magnitude less than their SFT")


# Passes over the data: the dataset-size rules are for SFT. Preference runs take 1 to 3 (TRL's
# default is 3; Zephyr's DPO ran 1 to 3); GRPO samples new completions every step, so one pass over
# the prompts already brings new data at each step.
TASK_EPOCHS = {"dpo": 3.0, "kto": 3.0, "orpo": 3.0, "grpo": 1.0}


def epochs(goals: Goals, value: float, reason: str, dataset: DatasetProfile | None = None) -> Decision[float]:
    """The task's passes over the data, in place of the SFT rule's (`value`, `reason`)."""
    name = goals.task_name
    if name == "sft" or goals.epochs is not None:
        return Decision(value, reason)
    wanted = TASK_EPOCHS[name]
    why = ("one pass over the prompts: every step samples new completions" if name == "grpo" else
           "preference runs take 1 to 3 passes (TRL's default 3), and overfit the pairs beyond")
    return Decision(wanted, f"{wanted:g} epoch{'s' if wanted != 1 else ''}: {why} (the dataset-size rules are SFT's)")


def reference(goals: Goals, method: Method, beta: float) -> Decision[Reference]:
    """Where the reference log-probs come from, before the search: none for ORPO and GRPO at beta
    0; the policy with its adapter disabled under LoRA (no second copy); a second copy for full
    fine-tuning, which the planner swaps for a precomputed pass when the copy does not fit."""
    name = goals.task_name
    asked = goals.reference
    if asked is not None:
        return Decision(asked, f"{asked} ({goals.origin('reference')})")
    if name == "orpo" or (name == "grpo" and beta == 0):
        why = "ORPO has no reference model" if name == "orpo" else "beta 0: GRPO has no KL term, so no reference model"
        return Decision("none", f"none: {why}")
    if method != "full":
        words = {"lora": "LoRA", "qlora": "QLoRA"}[method]
        return Decision("adapter", f"adapter: the {words} policy with its adapter disabled is the reference, "
                                   "so no second copy of the weights is held")
    return Decision("copy", "copy: a second, frozen copy of the weights (full fine-tuning changes every weight)")


def settings(goals: Goals, dataset: DatasetProfile, method: Method, model: ModelSpec) -> Decision[TaskSettings] | None:
    """The task's settings (None for SFT), with one reason naming each value's source."""
    name = goals.task_name
    if name == "sft":
        asked = [key for key in TASK_KEYS if getattr(goals, key) is not None]
        if asked:
            raise UserError(f"{', '.join(asked)} ({goals.origin(asked[0])}) are settings of the preference and reward "
                            "tasks, but the task is sft.", title="Task",
                            fix=f"Pass --task dpo, orpo, kto or grpo, or drop {', '.join(asked)}.")
        return None
    _refuse_what_the_trainer_lacks(goals, name)
    beta = goals.beta if goals.beta is not None else DEFAULT_BETA[name]
    ref = reference(goals, method, beta)
    parts = [f"beta {beta:g} ({goals.origin('beta') if goals.beta is not None else BETA_SOURCE[name]})",
             f"reference {ref.reason}"]
    prompt = dataset.prompt_tokens_max
    if name == "grpo":
        generations = goals.num_generations or DEFAULT_GENERATIONS
        embedded = dataset.source.startswith("embedded:")
        completion = goals.max_completion_length or (EMBEDDED_COMPLETION if embedded else DEFAULT_COMPLETION)
        completion = min(completion, max(1, model.max_positions - round_up(prompt or dataset.max_tokens)))
        temperature = goals.temperature if goals.temperature is not None else (
            EMBEDDED_TEMPERATURE if embedded else DEFAULT_TEMPERATURE)
        rewards = list(goals.rewards or [EXACT_ANSWER])
        parts += [f"{generations} completions per prompt ({goals.origin('num_generations') if goals.num_generations else 'TRL default'})",
                  f"completions up to {completion} tokens (" + (goals.origin("max_completion_length")
                  if goals.max_completion_length else "the embedded answers are a few digits" if embedded
                  else "TRL's default") + ")",
                  f"temperature {temperature:g} (" + (goals.origin("temperature") if goals.temperature else
                  "the embedded model answers every sum right at 1.0, so every group would score alike; at 2.0 "
                  "about three completions in four are right, and the reward has room to rise" if embedded
                  else "TRL default") + ")",
                  "reward " + ", ".join(rewards) + f" ({goals.origin('rewards') if goals.rewards else 'the exact answer of each row'})"]
        value = TaskSettings(beta=beta, reference=ref.value, num_generations=generations,
                             max_completion_length=completion, temperature=temperature, rewards=rewards,
                             prompt_tokens=prompt or dataset.max_tokens, response_tokens=0)
    else:
        if name == "kto" and goals.micro_batch == 1:
            raise UserError(f"micro_batch 1 ({goals.origin('micro_batch')}) cannot run KTO: its KL term pairs each "
                            "prompt with another row's completion of the same micro-batch (TRL refuses a "
                            "per-device batch of 1).", title="Task", fix="Use --micro-batch 2 or more.")
        if goals.num_generations or goals.rewards or goals.temperature:
            asked = [k for k in ("num_generations", "rewards", "temperature") if getattr(goals, k)]
            raise UserError(f"{', '.join(asked)} ({goals.origin(asked[0])}) are GRPO's settings, but the task is "
                            f"{name}.", title="Task", fix=f"Drop {', '.join(asked)}, or pass --task grpo.")
        response = max(dataset.chosen_tokens_max, dataset.rejected_tokens_max, dataset.completion_tokens_max)
        value = TaskSettings(beta=beta, reference=ref.value, prompt_tokens=prompt, response_tokens=response)
    return Decision(value, "; ".join(parts))


def _refuse_what_the_trainer_lacks(goals: Goals, name: Task) -> None:
    """Settings the task's TRL trainer has no field for: padding-free packing (DPO, ORPO, KTO and
    GRPO pad each batch themselves), activation offloading (ORPO, GRPO) and context parallelism
    (ORPO pads nothing to the chunks it needs)."""
    lacks = {"packing": bool(goals.packing),
             "activation_offloading": bool(goals.activation_offloading) and name in ("orpo", "grpo"),
             "context_parallel": (goals.context_parallel or 1) > 1 and name == "orpo"}
    for key, asked in lacks.items():
        if asked:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{key} ({goals.origin(key)}) is not something TRL's {name.upper()} trainer can do.",
                            title="Task", fix=f"Drop {flag}, or train with --task sft.")


def max_length(settings_: TaskSettings, dataset: DatasetProfile, model: ModelSpec) -> Decision[int]:
    """GRPO's sequence: the longest prompt (rounded up to 64) and the longest completion."""
    prompt = round_up(settings_.prompt_tokens or dataset.max_tokens)
    assert settings_.max_completion_length is not None
    length = min(prompt + settings_.max_completion_length, model.max_positions)
    return Decision(length, f"{length} tokens: the longest prompt ({settings_.prompt_tokens or dataset.max_tokens} "
                            f"tokens, rounded up to {prompt}) and a completion of up to "
                            f"{settings_.max_completion_length}")


def effective_batch(goals: Goals, world: int, generations: int, effective: int) -> Decision[int]:
    """GRPO's batch of completions holds whole groups: a multiple of num_generations (and of what
    one micro-step takes in)."""
    step = world * (goals.micro_batch or 1)
    unit = step * generations // math.gcd(step, generations)
    wanted = effective if goals.effective_batch else max(effective, DEFAULT_EFFECTIVE_BATCH, generations)
    raised = unit * math.ceil(wanted / unit)
    if raised > MAX_BATCH:
        raise UserError(f"GRPO's batch of completions would be {raised}, more than {MAX_BATCH}.", title="Batch",
                        fix="Lower --num-generations or --micro-batch.")
    if goals.effective_batch and raised != goals.effective_batch:
        raise UserError(f"effective_batch {goals.effective_batch} ({goals.origin('effective_batch')}) counts "
                        f"completions, and GRPO needs whole groups of num_generations {generations} per micro-step "
                        f"layout: {goals.effective_batch} is not a multiple of {unit}.", title="Batch",
                        fix=f"Use --effective-batch {raised} (or another multiple of {unit}), or change --num-generations.")
    return Decision(raised, f"{raised} completions per optimizer step: {raised // generations} prompts x "
                            f"{generations} completions (GRPO's groups must be whole)")


def setup(base: TrainSetup, task_name: Task, settings_: TaskSettings | None) -> TrainSetup:
    """The memory model's view of the task."""
    if settings_ is None:
        return base
    return dataclasses.replace(base, task=task_name, reference=settings_.reference,
                               num_generations=settings_.num_generations or 0,
                               prompt_len=settings_.prompt_tokens,
                               completion_len=settings_.max_completion_length or settings_.response_tokens)


def with_reference(settings_: TaskSettings, value: Reference) -> TaskSettings:
    return dataclasses.replace(settings_, reference=value)


def lead_with_levers(error: UserError, try_with: Callable[[dict[str, object], Goals], object], base: TrainSetup,
                     goals: Goals, settings_: TaskSettings) -> UserError:
    """A "does not fit" refusal whose fix names the task's own levers first: precomputed
    reference log-probs, a LoRA policy (its disabled adapter is the reference), fewer generations
    and shorter completions; each is said only when a plan fits with it. `try_with(changes, goals)`
    runs the search with the setup changes; it raises a UserError when nothing fits."""
    from llmwizard.autotune.plan.no_fit import DoesNotFit

    if not isinstance(error, DoesNotFit):
        return error
    trials: list[tuple[str, dict[str, object], Goals]] = []
    if base.task in ("dpo", "kto") and settings_.reference == "copy":
        trials.append(("--reference precompute (the reference log-probs computed before training; no second "
                       "copy held)", {"reference": "precompute"}, dataclasses.replace(goals, reference=None)))
    if base.method == "full" and settings_.reference != "none":
        trials.append(("--method lora (the policy with its adapter disabled is the reference: no second copy)",
                       {"method": "lora", "reference": "adapter", "lora_targets": None},
                       dataclasses.replace(goals, method="lora", reference=None)))
    if base.task == "grpo" and base.num_generations > 2:
        fewer = max(2, base.num_generations // 2)
        trials.append((f"--num-generations {fewer} (a smaller group to sample and score)",
                       {"num_generations": fewer}, goals))
    if base.task == "grpo" and base.completion_len > 64:
        shorter = base.completion_len // 2
        trials.append((f"--max-completion-length {shorter} (a shorter KV cache and policy sequence)",
                       {"completion_len": shorter, "seq_len": base.seq_len - (base.completion_len - shorter)}, goals))
    levers: list[str] = []
    for words, changes, changed in trials:
        try:
            found = try_with(changes, changed)
        except UserError:
            continue
        best = getattr(found, "best", None)
        total = getattr(getattr(best, "estimate", None), "total", 0)
        levers.append(words + (f": fits at {total / 2**30:.1f} GiB per device" if total else ": fits"))
    if not levers:
        return error
    previous = error

    def fix() -> str:
        return (f"The task's own levers first: {'; or '.join(levers)}. Otherwise: {previous.fix}")

    return DoesNotFit(previous.message, title=previous.title, make_fix=fix)
