"""A plan seen again: the memory model's view of it, and the same plan at a smaller micro-batch
after a run ran out of memory.
"""

from __future__ import annotations

from dataclasses import replace

from llmwizard.autotune.memory import estimate
from llmwizard.autotune.model.model_types import ModelSpec
from llmwizard.autotune.plan import Plan
from llmwizard.autotune.memory.savers import fused_in_backward
from llmwizard.autotune.train_setup import TrainSetup


def setup_of(plan_: Plan, **changes: object) -> TrainSetup:
    """The memory model's view of a plan, with `changes` applied (e.g. micro_batch=2)."""
    setup = TrainSetup(method=plan_.method, strategy=plan_.strategy, offload=plan_.offload,
                       num_gpus=plan_.num_processes // (plan_.num_machines if plan_.hybrid_shard else 1),
                       micro_batch=plan_.micro_batch, seq_len=plan_.max_length,
                       checkpointing=plan_.activation_checkpointing, precision=plan_.precision,
                       optimizer=plan_.optimizer, attention=plan_.attention,
                       lora_r=plan_.lora.r if plan_.lora else 8,
                       lora_targets=plan_.lora.adapted() if plan_.lora else None,
                       lora_dropout=plan_.lora.dropout if plan_.lora else 0.0, device=plan_.device,
                       gpus_per_node=plan_.processes_per_machine, cp=plan_.context_parallel,
                       offload_activations=plan_.activation_offloading, image_patches=plan_.image_patches,
                       train_vision_tower=plan_.train_vision_tower, liger=plan_.liger_kernel)
    return replace(setup, **changes)  # type: ignore[arg-type]


def pinned_change(plan_: Plan, key: str, old: object, new: object) -> str:
    """The words that say a value the user pinned changes, and why; "" when it was not pinned.
    The probe and the out-of-memory recovery change a pinned value only to avoid a failure."""
    if key not in plan_.pinned:
        return ""
    return f" (you set {key} {old}; changed to {new} only because the run would fail otherwise)"


def shrink_micro_batch(plan_: Plan, why: str, model: ModelSpec | None = None) -> Plan | None:
    """The same plan at half the micro-batch, accumulation doubled so the effective batch stays;
    None when the micro-batch is already 1. Used after an out-of-memory failure. A micro-batch the
    user pinned is halved too (the alternative is a failed run), and the reason says so."""
    if plan_.micro_batch <= 1:
        return None
    micro = plan_.micro_batch // 2
    why += pinned_change(plan_, "micro_batch", plan_.micro_batch, micro)
    data_parallel = plan_.num_processes // plan_.context_parallel  # ranks sharing a sequence count once
    reasons = dict(plan_.reasons)
    if fused_in_backward(plan_.optimizer):  # no accumulation: the effective batch halves with it
        reasons["batch"] = (f"micro-batch {micro} x 1 process x 1 accumulation = effective batch {micro}; halved "
                            f"from {plan_.micro_batch} because {why} (AdaLomo cannot accumulate gradients)")
        new = replace(plan_, micro_batch=micro, effective_batch=micro, reasons=reasons)
    else:
        grad_accum = plan_.effective_batch // (micro * data_parallel)
        reasons["batch"] = (f"micro-batch {micro} x {data_parallel} process(es) x {grad_accum} accumulation = "
                            f"effective batch {plan_.effective_batch}; halved from {plan_.micro_batch} because {why}")
        new = replace(plan_, micro_batch=micro, grad_accum=grad_accum, reasons=reasons)
    if model is not None:
        new = replace(new, estimate=estimate(model, setup_of(new), plan_.estimate.budget))
    return new
