"""The tasks the training entry runs, as TRL does them: each task's config class, its trainer, and
how the trainer is built (docs/tasks.md).

    task  config class (TrlParser)            trainer
    sft   trl.SFTConfig                       trl.SFTTrainer
    dpo   trl.DPOConfig                       trl.DPOTrainer
    orpo  trl.experimental.orpo.ORPOConfig    trl.experimental.orpo.ORPOTrainer
    kto   trl.KTOConfig                       trl.KTOTrainer
    grpo  trl.GRPOConfig                      trl.GRPOTrainer (with the reward functions)

Where a preference task's reference log-probabilities come from (plan.yaml's task_settings.reference)
reaches the trainer through the exported YAML, and TRL 1.16 decides from it:

- `adapter`: the policy is a PEFT model (use_peft) and no ref_model is passed; DPO, KTO and GRPO
  then compute the reference with the adapter disabled (no second copy of the weights).
- `copy`: full fine-tuning and no ref_model passed; DPOTrainer, KTOTrainer and GRPOTrainer (beta > 0)
  load a second, frozen copy from the policy's own `config._name_or_path` (the model directory the
  entry loaded, so a merged SFT start is its own reference) and wrap it for DDP, FSDP or DeepSpeed.
- `precompute`: `precompute_ref_log_probs: true` (DPO, KTO): one pass over the data before training
  stores the reference's log-probabilities in the dataset; no reference is held while training.
- `none`: ORPO (no reference at all), or GRPO at beta 0 (no KL term, so no reference is loaded).

Nothing here imports TRL or torch until a trainer is built; reward functions are imported by name
(`load_rewards`), and a name that does not import is a UserError naming it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.schema import Task, choices

TASKS: tuple[str, ...] = tuple(choices(Task))


@dataclass(frozen=True)
class TaskKind:
    """One task: where TRL keeps its config class and trainer, and what its trainer takes."""

    name: str
    module: str            # the module holding both classes
    config: str            # the config class TrlParser reads the YAML into
    trainer: str
    takes_ref_model: bool  # the trainer's `ref_model` argument (always None here: see the module's docstring)
    takes_rewards: bool    # GRPO's reward functions

    def load(self) -> tuple[type, type]:
        """(config class, trainer class)."""
        if self.module.startswith("trl.experimental"):
            # trl.experimental warns on import that its APIs may change; the version is pinned and the tests run it.
            os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        module = importlib.import_module(self.module)
        return getattr(module, self.config), getattr(module, self.trainer)


TASK_KINDS: dict[str, TaskKind] = {
    "sft": TaskKind("sft", "trl", "SFTConfig", "SFTTrainer", takes_ref_model=False, takes_rewards=False),
    "dpo": TaskKind("dpo", "trl", "DPOConfig", "DPOTrainer", takes_ref_model=True, takes_rewards=False),
    "orpo": TaskKind("orpo", "trl.experimental.orpo", "ORPOConfig", "ORPOTrainer", takes_ref_model=False,
                     takes_rewards=False),
    "kto": TaskKind("kto", "trl", "KTOConfig", "KTOTrainer", takes_ref_model=True, takes_rewards=False),
    "grpo": TaskKind("grpo", "trl", "GRPOConfig", "GRPOTrainer", takes_ref_model=False, takes_rewards=True),
}


def task_kind(task: str) -> TaskKind:
    try:
        return TASK_KINDS[task]
    except KeyError:
        raise UserError(f"--task {task!r} is not a task the training entry runs.", title="Task",
                        fix=f"Pass one of: {', '.join(TASKS)}.") from None


def config_class(task: str) -> type:
    """The task's config class: what TrlParser reads the task's YAML into, beside ScriptArguments and
    ModelConfig."""
    return task_kind(task).load()[0]


def load_rewards(task: str, names: list[str]) -> list[Callable[..., Any]]:
    """The reward functions `names` name (`package.module.function`), imported; GRPO needs one or
    more, the other tasks take none. A name that does not import, or that names no function, is a
    UserError naming it."""
    if task != "grpo":
        if names:
            raise UserError(f"--reward {' '.join(names)}: reward functions are GRPO's, but the task is {task}.",
                            title="Reward", fix="Drop --reward, or pass --task grpo.")
        return []
    if not names:
        raise UserError("GRPO scores its completions with reward functions, and none was given.", title="Reward",
                        fix="Pass --reward module.function (the embedded prompts' default is "
                            "llmwizard.runner.rank.rewards.exact_answer), or set task_settings.rewards in plan.yaml.")
    return [load_reward(name) for name in names]


def load_reward(name: str) -> Callable[..., Any]:
    module_name, _, attribute = name.rpartition(".")
    fix = ("Pass an importable function as module.function: the module on PYTHONPATH (or installed) on every "
           "machine of the run, the function defined in it, e.g. llmwizard.runner.rank.rewards.exact_answer.")
    if not module_name or not attribute:
        raise UserError(f"--reward {name!r} is not a dotted name module.function.", title="Reward", fix=fix)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 (a missing module, or one that fails as it imports: the user's to fix)
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no message'}"
        raise UserError(f"--reward {name}: the module {module_name} does not import ({why}).", title="Reward",
                        fix=fix) from None
    function = getattr(module, attribute, None)
    if function is None:
        raise UserError(f"--reward {name}: the module {module_name} has no {attribute}.", title="Reward", fix=fix)
    if not callable(function):
        raise UserError(f"--reward {name}: {attribute} in {module_name} is a {type(function).__name__}, not a "
                        "function.", title="Reward", fix=fix)
    return function


def build_trainer(task: str, *, model: Any, args: Any, train_dataset: Any, eval_dataset: Any, processing_class: Any,
                  peft_config: Any, callbacks: list[Any], rewards: list[Callable[..., Any]]) -> Any:
    """The task's TRL trainer over the loaded model (a plain model: the trainer wraps it in the
    LoRA adapter of `peft_config` itself). The reference follows from `args` and the model (see the
    module's docstring), so no ref_model is passed."""
    kind = task_kind(task)
    _, trainer_class = kind.load()
    common: dict[str, Any] = {"model": model, "args": args, "train_dataset": train_dataset,
                              "eval_dataset": eval_dataset, "processing_class": processing_class,
                              "callbacks": callbacks, "peft_config": peft_config}
    if kind.takes_ref_model:
        common["ref_model"] = None
    if kind.takes_rewards:
        common["reward_funcs"] = rewards
    return trainer_class(**common)


def reference_in_use(trainer: Any, task: str) -> str:
    """Where the trainer really takes its reference from, read from the trainer itself: TRL's own
    choice from the arguments and the model (see the module's docstring)."""
    if task == "orpo" or (task == "grpo" and getattr(trainer, "beta", 0.0) == 0.0) or task == "sft":
        return "none"
    if getattr(trainer, "precompute_ref_logps", False):
        return "precompute"
    if getattr(trainer, "ref_model", None) is not None:
        return "copy"
    from peft import PeftModel

    return "adapter" if isinstance(trainer.model, PeftModel) else "none"


def task_line(trainer: Any, task: str) -> str:
    """Rank 0's line after training for a task other than SFT: `llmwizard: task=dpo reference=adapter
    beta=0.1`, so train.log says what really ran beside the strategy line."""
    words = [f"task={task}", f"reference={reference_in_use(trainer, task)}", f"beta={trainer.args.beta:g}"]
    if task == "grpo":
        words += [f"num_generations={trainer.args.num_generations}",
                  "rewards=" + ",".join(getattr(trainer, "reward_func_names", []))]
    return "llmwizard: " + " ".join(words)
