"""What the loss curves say, in words a user can act on: pure functions over metrics records.

The same functions run in three places: inside each rank (the divergence check that stops a
run, llmwizard.runner.rank.callbacks), in the live view, and in the end-of-run summary (llmwizard.runner.session.session). They
read only the records of llmwizard.runner.metrics, so a finished run can be diagnosed again from its
metrics.jsonl.

The rules come from Google's Gemini/Vertex AI tuning guidance (see REFERENCE.md, "Monitoring"):
training and validation loss should both fall; validation loss rising while training loss falls
means overfitting; a loss that does not move means too little signal; an initial loss above ~10
usually means truncated or badly formatted inputs. NaN/Inf and sudden spikes are the usual
signs of divergence (too high a learning rate, fp16 overflow, bad data).

Preference and reward runs (DPO, ORPO, KTO, GRPO) are judged by what their trainers log besides
the loss (llmwizard.runner.metrics): a reward margin that stops growing while the pairs are not yet
ranked right, chosen answers growing less likely along with the rejected ones (likelihood
displacement), a KL to the reference that keeps climbing, and GRPO groups whose completions all
score alike (no signal: the task is too hard or too easy). GRPO's loss is a policy-gradient
surrogate whose value says nothing of progress, so the loss rules that read its level or trend
are not applied to it; DPO and KTO have the margin rule in place of the flat-loss one.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

from llmwizard.runner.metrics import (
    COMPLETION_CLIPPED,
    KL,
    LOGPS_CHOSEN,
    LOGPS_REJECTED,
    REWARD,
    REWARD_ACCURACY,
    REWARD_MARGIN,
    REWARD_STD,
    ZERO_STD,
    current_records,
    loss_series,
    records_task,
)

# Google's guidance: "an initial loss above ~10 usually means inputs longer than the context
# were truncated (check format and lengths)". A pretrained model fine-tuned on text in its own
# format starts far lower (typically 1-4 nats per token).
INITIAL_LOSS_LIMIT = 10.0
# A model that predicts every token with equal probability has loss ln(vocab size): a first loss
# within this share of it means the weights carry no knowledge (random init, wrong tokenizer).
UNIFORM_LOSS_SHARE = 0.9

# Overfitting: the eval loss rose at this many evaluations in a row while the training loss fell.
# One rise is noise from a small eval split; three in a row is a trend (the guidance's "validation
# loss rising while training loss falls").
OVERFIT_RISES = 3
# A rise smaller than this share of the eval loss is treated as flat, not rising.
OVERFIT_MIN_RISE = 0.002

# Divergence: a logged loss this many times the median of the recent ones, and at least
# SPIKE_MIN_ABS nats above it. Batch-to-batch noise in fine-tuning stays well within 2x of the
# running median; the absolute floor keeps a memorised 0.01 -> 0.03 from counting as a spike.
SPIKE_RATIO = 2.0
SPIKE_MIN_ABS = 0.5
SPIKE_WINDOW = 10      # logged losses the median is taken over
# Logged losses needed before a verdict. Two is enough: the first losses of a fine-tuning run are
# its highest (it only falls from there), and SPIKE_CONFIRM guards against one odd batch.
SPIKE_MIN_HISTORY = 2
# A spike must last this many logged losses. One hard batch can double the loss of a small batch
# (a mix of short and long answers); a diverging run stays up. Costs one log of delay.
SPIKE_CONFIRM = 2

# An Inf/NaN gradient norm at every log over this many optimizer steps: clipping scales such a
# gradient to zero (or NaN), so nothing is learned. Under fp16 the loss scaler overflows on purpose
# while it searches its scale (65536, halved at each overflow, DeepSpeed's after two), so a streak
# that long is no news there; the longer one is not. A run that ended with every norm non-finite
# learned nothing whatever its precision.
NONFINITE_GRAD_STEPS = 3
NONFINITE_GRAD_STEPS_FP16 = 50

# What diverges, by the plan.yaml key that sets it: values above these are named as the cause.
# LoRA's adapters are scaled by alpha / r (alpha / sqrt(r) under rsLoRA): PEFT's default is 1, the
# planner's 2; far above, the adapters' output and gradients blow up.
LORA_SCALE_LIMIT = 16.0
# AdamW shrinks each weight by learning_rate x weight_decay at every step; fine-tuning uses 0 to
# 0.1, and above 1 the decay is the update.
WEIGHT_DECAY_LIMIT = 1.0
# Learning rates fine-tuning tolerates: about 10x the usual LoRA (2e-4) and full (2e-5) rates, and
# the embedded model's own 10x on top (it starts random); above, the rate is named as the cause.
LEARNING_RATE_LIMIT = {"lora": 1e-2, "full": 1e-3}
# A divergence within this share of the run (or these many steps) with no warmup names the missing
# warmup too: the first updates take the full rate with the optimizer's moments still empty.
EARLY_SHARE = 0.1
EARLY_STEPS = 20

# Plateau: the mean loss over the last quarter of the logged steps is within this share of the
# mean over the first quarter. 2% over a whole run is what the eye reads as a flat line.
PLATEAU_MIN_DROP = 0.02
PLATEAU_MIN_LOGS = 8   # too few points to call a trend below this
# Still falling at the end: the last quarter is this much below the third quarter.
STILL_FALLING_DROP = 0.05

# ----------------------------------------------------------------------------- preference and reward runs
# A trend is judged from this many logs on, and (while the run goes on) only from half the run on,
# as the flat loss is: the same reasons hold (too few points; warmup).
TASK_MIN_LOGS = PLATEAU_MIN_LOGS
# Reward accuracy at which the pairs count as ranked right: above it nearly every pair is, and a
# margin that stops growing there has converged rather than stalled.
ACCURACY_DONE = 0.9
# KTO logs no accuracy (its rows are unpaired): the margin at which the Bradley-Terry model the
# preference losses stand on gives the chosen answer ACCURACY_DONE odds, ln(0.9 / 0.1) = 2.2
# reward units, takes its place.
MARGIN_DONE = math.log(ACCURACY_DONE / (1 - ACCURACY_DONE))
# A margin still being learnt grows by more than this share from the third quarter of the run to
# the last (the loss rule's still-falling share), and by at least MARGIN_MIN_RISE reward units: near
# 0 a share of the margin is nothing. DPO's and KTO's rewards are beta x a log-ratio summed over the
# answer's tokens: 0.02 is 0.2 nats at the published beta 0.1. ORPO's are beta x a per-token mean
# log-prob, some hundred times smaller on answers of a hundred tokens and more: 0.002 is 0.02 nats
# per token.
MARGIN_MIN_RISE_SHARE = 0.05
MARGIN_MIN_RISE = {"dpo": 0.02, "kto": 0.02, "orpo": 0.002}
# Below this reward accuracy more pairs are ranked wrong than right by a clear share: swapped labels.
ACCURACY_SWAPPED = 0.4
# Likelihood displacement: the chosen answers' log-probability fell by this share of where it began
# (DPO and KTO sum it over the answer's tokens, ORPO averages it per token: a share means the same
# for both, each chosen token about 10% less likely), and by at least DISPLACEMENT_MIN nats, so a
# memorised answer's -0.02 -> -0.03 is no news; while the rejected answers' fell too.
DISPLACEMENT_SHARE = 0.1
DISPLACEMENT_MIN = 0.1
# KL to the reference, running away: above this level and still growing by KL_GROWTH from one
# quarter of the run to the next. GRPO logs it per token (k3 estimate, about half the squared
# log-ratio): 0.1 is each sampled token's log-probability some 0.45 nats (1.6x) off the
# reference's. KTO logs it per completion (summed over its tokens): 10 nats moves KTO's reference
# point by a whole reward unit at the published beta 0.1.
KL_LIMIT = {"grpo": 0.1, "kto": 10.0}
KL_GROWTH = 1.5
# GRPO learns from the spread inside a group: a completion's advantage is its reward minus its
# group's mean. When this share of the groups scored all their completions alike, nearly every
# step is wasted. Without TRL's share, a reward_std below REWARD_STD_FLOOR means the same.
ZERO_STD_SHARE = 0.9
REWARD_STD_FLOOR = 1e-3
# Completions cut at max_completion_length: from this share on the cap is named as a cause.
CLIPPED_SHARE = 0.2

WARNING = "warning"
STOP = "stop"


@dataclass(frozen=True)
class Finding:
    code: str        # initial_loss | uniform_loss | non_finite | non_finite_grad | spike | overfitting |
                     # plateau | still_falling | margin_stall | likelihood_displacement | kl_runaway |
                     # reward_zero | reward_saturated
    severity: str    # warning | stop
    step: int        # the step the finding is about (first bad step, best eval step, ...)
    title: str
    message: str
    fix: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def begin_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The latest `begin` record (settings of the attempt now running), or {}."""
    for record in reversed(records):
        if record.get("type") == "begin":
            return record
    return {}


def initial_loss(records: list[dict[str, Any]]) -> Finding | None:
    losses = [(step, loss) for step, loss in loss_series(records) if math.isfinite(loss)]
    if not losses:
        return None
    step, first = losses[0]
    vocab = next((int(r["vocab_size"]) for r in records if r.get("type") == "begin" and r.get("vocab_size")), 0)
    uniform = math.log(vocab) if vocab > 1 else None
    if uniform is not None and first >= UNIFORM_LOSS_SHARE * uniform and first > INITIAL_LOSS_LIMIT:
        return Finding("uniform_loss", WARNING, step, "Initial loss is that of random guessing",
                       f"The first loss {first:.2f} is close to ln({vocab}) = {uniform:.2f}, the loss of a model that "
                       "gives every token the same probability: the weights know nothing about this text.",
                       "Check that --model points at trained weights and that the tokenizer belongs to it.")
    if first > INITIAL_LOSS_LIMIT:
        return Finding("initial_loss", WARNING, step, "Initial loss above 10",
                       f"The first loss is {first:.2f}. A model fine-tuned on text it can read starts well below 10; "
                       "this usually means inputs were cut at max_length or are not in the chat format the "
                       "model expects.",
                       "Check the dataset format and the longest examples (llmwizard plan shows the token "
                       "lengths); raise --max-length or shorten the examples.")
    return None


def divergence(records: list[dict[str, Any]], since_step: int = 0, final: bool = False,
               task: str | None = None) -> Finding | None:
    """The first NaN/Inf loss, streak of Inf/NaN gradient norms or loss spike confirmed at or after
    `since_step`, or None. A `stop` finding: the run must end. The callback in each rank passes the
    current step, so each log is judged once; `step` of the finding is the first bad step. The
    message names the plan.yaml key whose value most likely caused it (`suspects`).

    One Inf gradient norm is no divergence: with fp16 the loss scaler overflows on purpose in the
    first steps (the step is skipped). A streak is (`nonfinite_grad`); `final`: the run ended.
    `task`: the run's (else the records say); GRPO's loss is judged for NaN/Inf only.
    """
    for record in current_records(records):
        if record.get("type") != "log" or int(record.get("step") or 0) < since_step:
            continue
        for key in ("loss", "eval_loss"):
            value = record.get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                step = int(record["step"])
                message, fix = _cause(records, step, _divergence_fix(records))
                return Finding("non_finite", STOP, step, "Training diverged (NaN/Inf)",
                               f"The {key.replace('_', ' ')} became {value} at step {step}: the weights are no "
                               "longer numbers, and every later step would be wasted." + message, fix)
    grad = nonfinite_grad(records, since_step, final)
    if grad is not None:
        return grad
    if (task or records_task(records)) == "grpo":
        return None  # GRPO's loss sits near 0 with either sign: "twice the median" means nothing there
    losses = [(step, loss) for step, loss in loss_series(records) if math.isfinite(loss)]
    for index in range(SPIKE_MIN_HISTORY, len(losses) - SPIKE_CONFIRM + 1):
        confirm_step = losses[index + SPIKE_CONFIRM - 1][0]
        if confirm_step < since_step:
            continue
        median = statistics.median(value for _, value in losses[max(0, index - SPIKE_WINDOW):index])
        window = losses[index:index + SPIKE_CONFIRM]
        if all(loss > SPIKE_RATIO * median and loss - median > SPIKE_MIN_ABS for _, loss in window):
            step, loss = window[0]
            message, fix = _cause(records, step, _divergence_fix(records))
            return Finding("spike", STOP, step, "Training diverged (loss spike)",
                           f"The loss jumped to {loss:.3f} at step {step}, {loss / median:.1f}x the recent median "
                           f"{median:.3f}, and stayed up: the updates have thrown the model off course." + message,
                           fix)
    return None


def nonfinite_grad(records: list[dict[str, Any]], since_step: int = 0, final: bool = False) -> Finding | None:
    """Inf/NaN gradient norms at every log over NONFINITE_GRAD_STEPS optimizer steps (fp16: its
    own count, or every log of an attempt that ended), confirmed at or after `since_step`."""
    settings = begin_record(records)
    need = NONFINITE_GRAD_STEPS_FP16 if settings.get("fp16") else NONFINITE_GRAD_STEPS
    start = before = 0   # the step the attempt began at; the step of the last log before the streak
    streak: list[tuple[int, float]] = []
    logs = 0
    for record in current_records(records):
        if record.get("type") == "begin":
            start = before = int(record.get("step") or 0)
            streak, logs = [], 0
            continue
        value = record.get("grad_norm")
        if record.get("type") != "log" or not isinstance(value, (int, float)):
            continue
        step = int(record.get("step") or 0)
        logs += 1
        if math.isfinite(value):
            before, streak = step, []
            continue
        streak.append((step, float(value)))
        if len(streak) >= 2 and step >= since_step and step - before >= need:
            return _grad_finding(records, streak, from_start=before == start and streak[0][0] == start + 1)
    if final and len(streak) >= 2 and len(streak) == logs and streak[-1][0] >= since_step:
        return _grad_finding(records, streak, from_start=streak[0][0] == start + 1)
    return None


def _grad_finding(records: list[dict[str, Any]], streak: list[tuple[int, float]], from_start: bool) -> Finding:
    (first, value), last = streak[0], streak[-1][0]
    message, fix = _cause(records, first, _grad_fix(begin_record(records), from_start), updates=not from_start)
    return Finding("non_finite_grad", STOP, first, "Gradient norm is Inf/NaN",
                   f"The gradient norm was {value} at every logged step from step {first} to {last}: gradient "
                   "clipping scales such a gradient to zero (or NaN), so the weights learn nothing and every "
                   "later step would be wasted."
                   + (" It was so from the first step, before any update: the cause is in the forward and "
                      "backward pass, not the learning rate." if from_start else "") + message, fix)


def _grad_fix(settings: dict[str, Any], from_start: bool) -> str:
    """The advice when no setting is out of range (the learning rate only after updates)."""
    if settings.get("fp16"):
        return ("Set precision in plan.yaml to bf16 (or fp32): fp16 overflows here. Then start again "
                "(`llmwizard run DIR --fresh`).")
    lower = "" if from_start else f"; or lower learning_rate in plan.yaml{_tenth(_learning_rate_of(settings))}"
    return (f"Check the data for empty or extreme rows and that the model's weights load as numbers{lower}. "
            "Then start again (`llmwizard run DIR --fresh`).")


# ----------------------------------------------------------------------------- the cause, by its plan.yaml key

@dataclass(frozen=True)
class Suspect:
    """A plan.yaml setting whose value can cause a divergence, and by how far it is out of range."""

    key: str         # the plan.yaml key: learning_rate, weight_decay, lora.alpha, warmup_ratio
    value: str       # its value as the run had it
    factor: float    # the value over its limit: the largest is the likeliest cause; 1.0 for warmup
    why: str
    fix: str


def suspects(records: list[dict[str, Any]], bad_step: int, updates: bool = True) -> list[Suspect]:
    """The settings of the run (its `begin` record: what the ranks trained with) that are out of
    the range fine-tuning works in, likeliest cause first. `updates`: weights changed before the
    bad step (not so for a first step's gradient: the learning rate and weight decay cannot have
    caused it)."""
    begin = begin_record(records)
    found: list[Suspect] = []
    r, alpha = begin.get("lora_r"), begin.get("lora_alpha")
    if isinstance(r, (int, float)) and isinstance(alpha, (int, float)) and r > 0:
        scale = alpha / (math.sqrt(r) if begin.get("lora_rslora") else r)
        if scale > LORA_SCALE_LIMIT:
            how = "alpha / sqrt(r)" if begin.get("lora_rslora") else "alpha / r"
            found.append(Suspect(
                "lora.alpha", f"{alpha:g}", scale / LORA_SCALE_LIMIT,
                f"lora.alpha {alpha:g} is {_times(alpha / r)}x lora.r {r:g}: the adapters' output and gradients "
                f"are scaled by {how} = {_times(scale)} (the usual is 1 to 2)",
                f"set lora.alpha in plan.yaml to {2 * int(r)} (twice lora.r; preset key lora_alpha)"))
    lr = _learning_rate(records)
    decay = begin.get("weight_decay")
    if updates and isinstance(decay, (int, float)) and decay > WEIGHT_DECAY_LIMIT:
        shrink = f" = {lr * decay:.3g}" if lr else ""
        over = " (more than the weight itself: weights flip sign and grow)" if lr and lr * decay >= 1 else ""
        found.append(Suspect(
            "weight_decay", f"{decay:g}", decay / WEIGHT_DECAY_LIMIT,
            f"weight_decay {decay:g} is far above the usual 0 to 0.1: each AdamW step shrinks every weight by "
            f"learning_rate x weight_decay{shrink} of itself{over}",
            "set weight_decay in plan.yaml to 0.0 to 0.1 (e.g. 0.01; preset key weight_decay)"))
    method = "lora" if isinstance(r, (int, float)) else "full"
    limit = LEARNING_RATE_LIMIT[method]
    if updates and lr and lr > limit:
        found.append(Suspect(
            "learning_rate", f"{lr:g}", lr / limit,
            f"learning_rate {lr:g} is above the {limit:g} that {'LoRA' if method == 'lora' else 'full'} "
            "fine-tuning tolerates",
            f"set learning_rate in plan.yaml to a tenth, {lr / 10:.0e} (--learning-rate {lr / 10:.0e})"))
    warmup = begin.get("warmup_steps", begin.get("warmup_ratio"))
    max_steps = int(begin.get("max_steps") or 0)
    early = bad_step - int(begin.get("step") or 0) <= max(EARLY_STEPS, EARLY_SHARE * max_steps)
    if updates and early and isinstance(warmup, (int, float)) and warmup == 0:
        found.append(Suspect(
            "warmup_ratio", "0", 1.0,
            "warmup_ratio 0: the first updates take the full learning rate while the optimizer's moments are "
            "still empty",
            "set warmup_ratio in plan.yaml to 0.03 to 0.1"))
    return sorted(found, key=lambda suspect: -suspect.factor)


def _cause(records: list[dict[str, Any]], bad_step: int, otherwise: str, updates: bool = True) -> tuple[str, str]:
    """(" Likely cause: ..." for the message, the fix): the suspects by their plan.yaml keys, or
    `otherwise` when every setting is in range."""
    found = suspects(records, bad_step, updates)
    if not found:
        return "", otherwise
    first, *others = found
    also = "".join(f"; also {other.why}" for other in others)
    fix = "; ".join(suspect.fix for suspect in found)
    if first.factor <= 1:  # nothing out of range, only a missing warmup: the usual advice stands beside it
        return (f" Possible cause: {first.why}{also}.",
                f"{fix[0].upper()}{fix[1:]}; or {otherwise[0].lower()}{otherwise[1:]}")
    return (f" Likely cause: {first.why}{also}.",
            f"{fix[0].upper()}{fix[1:]}. Then start again from the last good checkpoint or from scratch "
            "(`llmwizard run DIR --fresh`).")


def _times(ratio: float) -> str:
    """A ratio in words: 1,000 or 6.2e+28, never 1e+03."""
    return f"{ratio:,.0f}" if 10 <= ratio < 1e7 else f"{ratio:.3g}"


def _tenth(lr: float | None) -> str:
    return f" (a tenth: --learning-rate {lr / 10:.0e})" if lr else ""


def spike_pending(records: list[dict[str, Any]]) -> bool:
    """The latest logged loss is spike-high but not yet confirmed by the next one. The callback
    skips saving a checkpoint then, so the damaged weights cannot rotate the last good
    checkpoint out (save_total_limit keeps only the newest few)."""
    losses = [loss for _, loss in loss_series(records)]
    if len(losses) <= SPIKE_MIN_HISTORY or not math.isfinite(losses[-1]) or records_task(records) == "grpo":
        return False
    recent = [value for value in losses[-1 - SPIKE_WINDOW:-1] if math.isfinite(value)]
    if not recent:
        return False
    median = statistics.median(recent)
    return losses[-1] > SPIKE_RATIO * median and losses[-1] - median > SPIKE_MIN_ABS


def _divergence_fix(records: list[dict[str, Any]]) -> str:
    """The advice when every setting is in range: the learning rate is the usual cause."""
    lr = _learning_rate(records)
    tenth = f" {lr:g} in plan.yaml{_tenth(lr)}" if lr else " (try a tenth)"
    return (f"Lower learning_rate{tenth} and start again from the last good checkpoint or from scratch; "
            "with fp16, prefer bf16 where the GPU supports it.")


def _learning_rate(records: list[dict[str, Any]]) -> float | None:
    return _learning_rate_of(begin_record(records))


def _learning_rate_of(begin: dict[str, Any]) -> float | None:
    lr = begin.get("learning_rate")
    return float(lr) if isinstance(lr, (int, float)) and lr > 0 else None


def _train_longer(records: list[dict[str, Any]]) -> str:
    """"train more epochs", or, when max steps ended the run before its epochs did, "raise max steps"
    (more epochs would change nothing)."""
    epochs = float(begin_record(records).get("num_train_epochs") or 0)
    reached = max((float(r["epoch"]) for r in records if r.get("type") == "log" and r.get("epoch") is not None),
                  default=0.0)
    max_steps = int(begin_record(records).get("max_steps") or 0)
    last_step = max((int(r["step"]) for r in records if r.get("type") == "log" and isinstance(r.get("step"), int)),
                    default=0)
    # (mid-run the epochs are not reached yet either: only a run that hit its cap stopped there)
    if epochs and max_steps and last_step >= max_steps and reached < epochs * 0.99:
        return (f"raise max steps (the run stopped at its cap of {max_steps} steps, after {reached:.2f} of "
                f"{epochs:g} epochs)")
    return "train more epochs"


def _raise_lr(records: list[dict[str, Any]]) -> str:
    """How to raise the learning rate; a figure only in the usual fine-tuning range (<= 5e-4),
    where x3 is a safe next try (LoRA tolerates ~10x the full fine-tuning rate)."""
    lr = _learning_rate(records)
    return f"raise the learning rate (e.g. --learning-rate {lr * 3:.0e})" if lr and lr <= 5e-4 \
        else "raise the learning rate"


def last_good_checkpoint(records: list[dict[str, Any]], bad_step: int) -> str | None:
    """The newest checkpoint saved before the damage that showed at `bad_step`.

    The loss logged at step S is the mean over the steps since the previous log, each computed
    with the weights left by the step before it; so with logging every k steps the first bad
    weights may be those saved at step S - k. Only checkpoints at or before S - k - 1 are
    certainly clean.
    """
    logging_steps = int(begin_record(records).get("logging_steps") or 1)
    limit = bad_step - logging_steps - 1
    good = [(int(r["step"]), str(r["checkpoint"])) for r in records
            if r.get("type") == "save" and r.get("checkpoint") and int(r["step"]) <= limit]
    return max(good)[1] if good else None


def overfitting(records: list[dict[str, Any]]) -> Finding | None:
    """Eval loss rising for OVERFIT_RISES evaluations in a row while the training loss fell."""
    evals = [(step, loss) for step, loss in loss_series(records, "eval_loss") if math.isfinite(loss)]
    train = [(step, loss) for step, loss in loss_series(records) if math.isfinite(loss)]
    if len(evals) <= OVERFIT_RISES or not train:
        return None
    for end in range(OVERFIT_RISES, len(evals)):
        window = evals[end - OVERFIT_RISES:end + 1]
        rising = all(b[1] > a[1] * (1 + OVERFIT_MIN_RISE) for a, b in pairwise(window))
        if not rising:
            continue
        train_before = _mean_near(train, window[0][0])
        train_after = _mean_near(train, window[-1][0])
        if train_before is None or train_after is None or train_after >= train_before:
            continue
        best_step, best = min(evals, key=lambda item: item[1])
        epoch = _epoch_at(records, best_step)
        at_epoch = f" (epoch {epoch:.1f})" if epoch is not None else ""
        return Finding("overfitting", WARNING, best_step, "Overfitting",
                       f"The eval loss rose from {window[0][1]:.3f} at step {window[0][0]} to {window[-1][1]:.3f} at "
                       f"step {window[-1][0]} while the training loss fell from {train_before:.3f} to "
                       f"{train_after:.3f}: the model is memorising the training rows. The best eval loss was "
                       f"{best:.3f} at step {best_step}{at_epoch}.",
                       (f"Train for fewer epochs (about {math.ceil(epoch)} reach the best eval loss)" if epoch
                        else f"Stop near step {best_step}")
                       + " or add more varied examples. The checkpoint with the best eval loss is kept and "
                       "loaded at the end.")
    return None


def plateau(records: list[dict[str, Any]], final: bool) -> Finding | None:
    """A loss that hardly moves, or (at the end) one still falling: too little signal."""
    losses = [(step, loss) for step, loss in loss_series(records) if math.isfinite(loss)]
    if len(losses) < PLATEAU_MIN_LOGS:
        return None
    max_steps = int(begin_record(records).get("max_steps") or 0)
    if not final and max_steps and losses[-1][0] < max_steps // 2:
        return None  # the first half of a run often looks flat during warmup; judge later
    quarter = max(2, len(losses) // 4)
    first = statistics.fmean(loss for _, loss in losses[:quarter])
    last = statistics.fmean(loss for _, loss in losses[-quarter:])
    drop = (first - last) / first if first > 0 else 0.0
    higher = _raise_lr(records)
    if drop < PLATEAU_MIN_DROP:
        return Finding("plateau", WARNING, losses[-1][0], "Loss is flat",
                       f"The loss went from {first:.3f} to {last:.3f} ({-drop:+.1%}) over steps "
                       f"{losses[0][0]}-{losses[-1][0]}: the model is hardly learning.",
                       f"{higher[0].upper() + higher[1:]} or {_train_longer(records)}; if it stays flat, check that "
                       "the answers are not cut off by max_length.")
    if final and len(losses) >= 2 * quarter + 2:
        third = statistics.fmean(loss for _, loss in losses[-2 * quarter:-quarter])
        if third > 0 and (third - last) / third > STILL_FALLING_DROP:
            return Finding("still_falling", WARNING, losses[-1][0], "Loss was still falling",
                           f"The loss fell {(third - last) / third:.0%} in the last quarter of the run "
                           f"({third:.3f} -> {last:.3f}): it had not converged.",
                           f"{_train_longer(records)[0].upper()}{_train_longer(records)[1:]} or {higher}.")
    return None


def diagnose(records: list[dict[str, Any]], final: bool = False, task: str | None = None) -> list[Finding]:
    """Every finding for a run, the most serious first. `final`: the run has ended. `task`: sft,
    dpo, orpo, kto or grpo when the caller knows it (plan.yaml); else the records say."""
    task = task or records_task(records)
    if task == "grpo":
        found = [divergence(records, final=final, task=task), kl_runaway(records, "grpo"),
                 reward_no_signal(records, final)]
        return sorted((f for f in found if f is not None), key=lambda f: f.severity != STOP)
    found = [divergence(records, final=final, task=task), overfitting(records), initial_loss(records)]
    if task in ("dpo", "orpo", "kto"):
        found += [margin_stall(records, task, final), likelihood_displacement(records, task, final)]
        if task == "kto":
            found.append(kl_runaway(records, task))
    # "train longer" would contradict the first two; a stalled margin says the more (ORPO's loss is
    # mostly its likelihood term, so its flat loss rule stays, unless the margin rule spoke).
    stalled = any(f is not None and f.code == "margin_stall" for f in found)
    if not found[0] and not found[1] and task not in ("dpo", "kto") and not stalled:
        found.append(plateau(records, final))
    return sorted((f for f in found if f is not None), key=lambda f: f.severity != STOP)


# ----------------------------------------------------------------------------- preference and reward runs

def _train_series(records: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of a finite `key` at each training log (not the evaluations) of the run."""
    return [(step, value) for step, value in loss_series(records, key) if math.isfinite(value)]


def _judged(records: list[dict[str, Any]], series: list[tuple[int, float]], final: bool) -> bool:
    """Enough logs to call a trend (TASK_MIN_LOGS) and, while the run goes on, half of it done."""
    if len(series) < TASK_MIN_LOGS:
        return False
    max_steps = int(begin_record(records).get("max_steps") or 0)
    return final or not max_steps or series[-1][0] >= max_steps // 2


def _quarters(values: list[float]) -> tuple[list[float], list[float], list[float], list[float]]:
    """The first quarter of the values, then the last three quarters' worth in order (each a
    quarter of the values long, at least 2): the first, second, third and last quarter."""
    q = max(2, len(values) // 4)
    return values[:q], values[-3 * q:-2 * q], values[-2 * q:-q], values[-q:]


def _beta_text(records: list[dict[str, Any]], factor: float) -> str:
    """How to change beta, in plan.yaml and as a flag, with the figure when the run logged its beta."""
    beta = begin_record(records).get("beta")
    if isinstance(beta, (int, float)) and beta > 0:
        return f"task_settings.beta in plan.yaml from {beta:g} to {beta * factor:g} (--beta {beta * factor:g})"
    return f"task_settings.beta in plan.yaml (--beta; {'double' if factor > 1 else 'halve'} it)"


def _lower_lr(records: list[dict[str, Any]]) -> str:
    lr = _learning_rate(records)
    return (f"lower learning_rate in plan.yaml to a third, {lr / 3:.0e} (--learning-rate {lr / 3:.0e})" if lr
            else "lower learning_rate in plan.yaml (--learning-rate; a third)")


def margin_stall(records: list[dict[str, Any]], task: str, final: bool = False) -> Finding | None:
    """DPO, ORPO, KTO: the reward margin stopped growing (MARGIN_MIN_RISE_SHARE, MARGIN_MIN_RISE)
    over the last quarter of the run while the pairs are not yet ranked right (reward accuracy
    below ACCURACY_DONE; for KTO, which logs none, a margin below MARGIN_DONE)."""
    margins = _train_series(records, REWARD_MARGIN)
    if not _judged(records, margins, final):
        return None
    values = [value for _, value in margins]
    first, _, third, last = (statistics.fmean(part) for part in _quarters(values))
    if last - third >= max(MARGIN_MIN_RISE_SHARE * abs(last), MARGIN_MIN_RISE.get(task, 0.02)):
        return None
    accuracies = [value for _, value in _train_series(records, REWARD_ACCURACY)]
    data = ""
    if accuracies:
        accuracy = statistics.fmean(_quarters(accuracies)[3])
        if accuracy >= ACCURACY_DONE:
            return None
        ranked = f"while only {accuracy:.0%} of the pairs are ranked right (chosen above rejected)"
        if accuracy < ACCURACY_SWAPPED:
            data = (" Fewer than half ranked right after training points at the data: check that chosen and "
                    "rejected are not swapped.")
        elif accuracy <= 1 - ACCURACY_SWAPPED:
            data = " An accuracy near 50% can also mean chosen and rejected answers hardly differ: check the pairs."
        else:
            data = (" Preference data labelled by people often tops out at 70-80%; if yours does, more training "
                    "will not help.")
    elif task == "kto" and last < MARGIN_DONE:
        ranked = f"while it is still below {MARGIN_DONE:.1f}, where a chosen answer would win nine times in ten"
    else:
        return None
    return Finding(
        "margin_stall", WARNING, margins[-1][0], "Reward margin stopped growing",
        f"The reward margin (chosen minus rejected reward) averaged {first:+.3f} over the first quarter of steps "
        f"{margins[0][0]}-{margins[-1][0]} and {last:+.3f} over the last, {last - third:+.3f} on the quarter before, "
        f"{ranked}: the model has stopped separating the answers you prefer from the others." + data,
        f"Raise {_beta_text(records, 2)}: the preference loss's pull is proportional to beta; or "
        f"{_raise_lr(records)}; or {_train_longer(records)}.")


def likelihood_displacement(records: list[dict[str, Any]], task: str, final: bool = False) -> Finding | None:
    """DPO, ORPO, KTO: the chosen answers' log-probability fell (DISPLACEMENT_SHARE,
    DISPLACEMENT_MIN) from the first quarter of the run to the last, the rejected ones' too."""
    chosen = _train_series(records, LOGPS_CHOSEN)
    rejected = _train_series(records, LOGPS_REJECTED)
    if not _judged(records, chosen, final) or len(rejected) < TASK_MIN_LOGS:
        return None
    c_parts, r_parts = _quarters([v for _, v in chosen]), _quarters([v for _, v in rejected])
    c0, c1 = statistics.fmean(c_parts[0]), statistics.fmean(c_parts[3])
    r0, r1 = statistics.fmean(r_parts[0]), statistics.fmean(r_parts[3])
    if c0 - c1 < max(DISPLACEMENT_SHARE * abs(c0), DISPLACEMENT_MIN) or r0 - r1 <= 0:
        return None
    per = "per token" if task == "orpo" else "summed over each answer's tokens"
    if task == "orpo":
        fix = (f"Lower {_beta_text(records, 0.5)}: ORPO's beta weighs the odds-ratio term against the likelihood "
               f"of the chosen answers; or {_lower_lr(records)}.")
    else:
        fix = (f"{_lower_lr(records)[0].upper()}{_lower_lr(records)[1:]}; or raise {_beta_text(records, 2)}, which "
               "holds the model nearer the reference; or train with --task orpo, whose loss keeps a likelihood "
               "(SFT) term on the chosen answers.")
    return Finding(
        "likelihood_displacement", WARNING, chosen[-1][0], "Chosen answers are growing less likely",
        f"The chosen answers' log-probability ({per}) fell from {c0:.4g} to {c1:.4g} "
        f"({(c0 - c1) / abs(c0):.0%} lower) while the rejected ones' fell from {r0:.4g} to {r1:.4g}: both fall"
        + (", the rejected faster, so the margin grows by pushing every answer down" if r0 - r1 > c0 - c1 else "")
        + " (likelihood displacement). The model grows less likely to write the answers you prefer too, and its "
        "probability moves to answers in neither set.", fix)


def kl_runaway(records: list[dict[str, Any]], task: str) -> Finding | None:
    """KTO, GRPO (beta > 0): the KL to the reference is above KL_LIMIT and still grew by KL_GROWTH
    over each of the last two quarters of the logs so far."""
    kl = _train_series(records, KL)
    if len(kl) < TASK_MIN_LOGS or task not in KL_LIMIT:
        return None
    _, second, third, last = (statistics.fmean(part) for part in _quarters([v for _, v in kl]))
    limit = KL_LIMIT[task]
    if last < limit or last < KL_GROWTH * third or third < KL_GROWTH * second:
        return None
    unit = "nats per token" if task == "grpo" else "nats per completion"
    return Finding(
        "kl_runaway", WARNING, kl[-1][0], "KL to the reference is running away",
        f"The KL between the model and its reference rose from {second:.3g} to {third:.3g} to {last:.3g} {unit} "
        f"over the last three quarters of steps {kl[0][0]}-{kl[-1][0]}, above {limit:g}, and is still climbing: "
        "the model drifts ever further from where it started, which is how it forgets what it could do and "
        "learns to game the reward.",
        f"Raise {_beta_text(records, 2)}, which weighs the KL more; or {_lower_lr(records)}.")


def reward_no_signal(records: list[dict[str, Any]], final: bool = False) -> Finding | None:
    """GRPO: over the last half of the logs ZERO_STD_SHARE of the groups scored all their
    completions alike (or the reward's spread is below REWARD_STD_FLOOR), at the lowest reward of
    the run (too hard: `reward_zero`) or at its highest (too easy: `reward_saturated`)."""
    rewards = _train_series(records, REWARD)
    if not _judged(records, rewards, final):
        return None
    window = [value for _, value in rewards[len(rewards) // 2:]]
    since = rewards[len(rewards) // 2][0]
    zero_std = [value for step, value in _train_series(records, ZERO_STD) if step >= since]
    spread = [value for step, value in _train_series(records, REWARD_STD) if step >= since]
    if zero_std:
        alike = statistics.fmean(zero_std)
        if alike < ZERO_STD_SHARE:
            return None
        groups = f"{alike:.0%} of the groups scored all their completions alike"
    elif spread and max(spread) <= REWARD_STD_FLOOR:
        groups = "every completion scored the same"
    else:
        return None
    mean = statistics.fmean(window)
    low, high = min(v for _, v in rewards), max(v for _, v in rewards)
    at_top = mean > 0 if high - low < 1e-9 else high - mean < mean - low
    steps = f"steps {since}-{rewards[-1][0]}"
    clipped = [value for step, value in _train_series(records, COMPLETION_CLIPPED) if step >= since]
    cut = statistics.fmean(clipped) if clipped else 0.0
    if at_top:
        return Finding(
            "reward_saturated", WARNING, rewards[-1][0], "Every completion already earns the reward",
            f"The reward stayed at {mean:.3f}, the highest of the run, over {steps}, and {groups}: the model "
            "already solves these prompts, and GRPO learns only from the differences inside a group, so there is "
            "no signal left.",
            "Use harder prompts (ones the model solves only sometimes); or stop here: this data has nothing more "
            "to teach it.")
    longer = (f"; raise max_completion_length (--max-completion-length): {cut:.0%} of the completions were cut at "
              "the cap" if cut >= CLIPPED_SHARE else "; raise max_completion_length (--max-completion-length) if "
              "answers need more room")
    return Finding(
        "reward_zero", WARNING, rewards[-1][0], "No completion earns a reward",
        f"The reward stayed at {mean:.3f}, the lowest of the run, over {steps}, and {groups}: nothing the model "
        "writes earns more than the rest, and GRPO learns only from the differences inside a group, so there is "
        "nothing to learn from.",
        "Use easier prompts; or start from a supervised run (--task sft on worked answers, then --model "
        "RUN_DIR/output); raise num_generations (--num-generations, e.g. double) so a group holds a success "
        f"more often{longer}.")


def _mean_near(series: list[tuple[int, float]], step: int, width: int = 3) -> float | None:
    """Mean of the `width` logged values at or before `step` (single batches are noisy)."""
    before = [value for s, value in series if s <= step][-width:]
    return statistics.fmean(before) if before else None


def _epoch_at(records: list[dict[str, Any]], step: int) -> float | None:
    for record in records:
        if record.get("type") == "log" and int(record.get("step", -1)) == step and record.get("epoch") is not None:
            return float(record["epoch"])
    return None
