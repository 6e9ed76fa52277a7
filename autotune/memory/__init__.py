"""Per-device memory model for one training step, by component, and the peak of that step.

Every figure is bytes on ONE device (a GPU, or one process's share of host RAM on the CPU). The
step modelled is the runner's: TRL's SFTTrainer with the dtypes runner/export/__init__.py writes (float32
weights + bf16/fp16 autocast for full fine-tuning, a half-precision base with fp32 LoRA adapters),
TRL's fused LM head (log-probs in vocabulary chunks, no full logits), HF's per-layer gradient
checkpointing, torch AdamW (fused), then zero_grad(set_to_none).

Sources: model states (llmwizard.autotune.memory.model_states) from the ZeRO paper (Rajbhandari et al.
2020) and DeepSpeed's own estimators; activations (llmwizard.autotune.memory.activations) derived tensor
by tensor from the autograd graph of HF's Llama/Qwen2/Gemma2 blocks (RMSNorm, GQA, SwiGLU/GeGLU)
and checked against FakeTensorMode + MemTracker peaks (bench/memory_validation.py, figures in
bench/results/); the LM head from trl.kernels.chunked_logprob. Gradients and activations peak at
opposite ends of backward, so the tensor peak is the largest of the step's phases (`peak_at`
names it), not the sum of the components. `total`, what fit decisions use, is that peak as the
system sees the process (nvidia-smi, RSS on the CPU): llmwizard.autotune.memory.reserved adds the
allocator's reserve, the CUDA context, library workspaces and NCCL buffers (docs/memory.md).

Preference and reward tasks (TrainSetup.task other than "sft": DPO, ORPO, KTO, GRPO) run the
policy's step at the shape their TRL trainer gives it (chosen and rejected in one batch, prompt +
completion) and add their own phases and terms: the reference model's copy and its forward, KTO's
KL pass, GRPO's generation, vLLM's share (llmwizard.autotune.memory.tasks, docs/tasks-memory.md,
measured with the real trainers by bench/task_memory.py). `components` names each such term.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from llmwizard.autotune.memory.activations import (
    LM_HEAD_TILE,
    NF4_BYTES,
    activation_bytes,
    adapter_forward_bytes,
    attention_kernel,
    layer_backward_bytes,
    layer_token_bytes,
    layout,
    logits_bytes,
    trainable_params,
    weight_copy_bytes,
)
from llmwizard.autotune.memory import tasks, vision
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.machine.hardware_types import GiB
from llmwizard.autotune.memory.long_context import offload_stash_bytes, offloaded_activations, per_rank, ring_buffers
from llmwizard.autotune.memory.model_states import ModelStates, model_states
from llmwizard.autotune.model.model_types import ModelSpec
from llmwizard.autotune.memory.savers import fused_in_backward, fused_update_temp, widest_update
from llmwizard.autotune.memory.reserved import ALLOCATOR_RESERVE, CPU_PROCESS, CUDA_CONTEXT, NCCL_COMMUNICATOR, expected_peak
from llmwizard.autotune.schema import Reference
from llmwizard.autotune.train_setup import (
    ATTENTIONS,
    METHODS,
    OFFLOADS,
    OPTIMIZERS,
    PRECISIONS,
    STRATEGIES,
    TrainSetup,
)

# Names callers import from here: the setup type and its choices live in
# llmwizard.autotune.train_setup, the activation figures in llmwizard.autotune.memory.activations.
__all__ = ["ATTENTIONS", "GiB", "LM_HEAD_TILE", "METHODS", "MemoryEstimate", "NF4_BYTES", "OFFLOADS", "OPTIMIZERS",
           "PRECISIONS", "STRATEGIES", "TrainSetup", "activation_bytes", "attention_kernel", "estimate",
           "layer_token_bytes", "logits_bytes", "reference_options", "trainable_params"]

# Framework costs outside the tensors the model owns (kept for callers; the figures and their
# sources are llmwizard.autotune.memory.reserved's).
OVERHEAD = {
    "cuda_context": CUDA_CONTEXT,
    "nccl": NCCL_COMMUNICATOR,
    "fragmentation": ALLOCATOR_RESERVE["expandable_segments"],
    "cpu_process": CPU_PROCESS,
}
# DeepSpeed, with the values runner/export/__init__.py writes into ds_config.json.
DEEPSPEED = {
    "allgather_bucket": 200_000_000,   # zero_optimization.allgather_bucket_size (elements)
    # "overlap_comm uses 4.5x the allgather_bucket_size and reduce_bucket_size" (DeepSpeed config
    # docs: 5e8 buckets cost 5e8 x 2 B x 2 x 4.5 = 9 GB); the exporter turns it on for GPUs.
    "overlap_factor": 4.5,
    # estimate_zero2/3_model_states_mem_needs: pinned host buffers add half again to offloaded states.
    "host_buffer_factor": 1.5,
}
@dataclass
class MemoryEstimate:
    params: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    total: int
    host_ram: int
    budget: int
    fits: bool
    trainable_params: int
    total_params: int
    notes: list[str] = field(default_factory=list)
    peak_at: str = ""                 # the phase of the step that sets `total`
    phases: dict[str, int] = field(default_factory=dict)  # tensor bytes at each phase of the step
    # `total` is the expected peak as the system sees it (nvidia-smi, RSS on the CPU): the tensor
    # peak (torch.cuda.max_memory_allocated) plus `reserved_parts` (llmwizard.autotune.memory.reserved),
    # times the calibration factor when earlier probes on this machine measured one.
    tensor_peak: int = 0
    reserved_parts: dict[str, int] = field(default_factory=dict)
    calibration: str = ""             # "calibrated from 3 probes on this machine: x1.07", or empty
    calibration_factor: float = 1.0
    # A preference or reward task's own terms, by name, in bytes per device ("reference copy",
    # "generation KV cache", ...: llmwizard.autotune.memory.tasks); empty for SFT.
    components: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_gpu"] = {key: data.pop(key) for key in
                           ("params", "grads", "optimizer", "activations", "logits", "overhead", "total")}
        if not data["components"]:  # SFT estimates read as before
            del data["components"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryEstimate:
        flat = dict(data)
        flat.update(flat.pop("per_gpu", {}))
        return cls(**flat)


def _validate(setup: TrainSetup) -> None:
    choices = (("method", setup.method, METHODS), ("strategy", setup.strategy, STRATEGIES),
               ("offload", setup.offload, OFFLOADS), ("optimizer", setup.optimizer, OPTIMIZERS),
               ("precision", setup.precision, PRECISIONS), ("attention", setup.attention, ATTENTIONS))
    for name, value, allowed in choices:
        if value not in allowed:
            raise UserError(f"Unknown {name} '{value}'.", title="Memory estimate",
                            fix=f"Use one of: {', '.join(allowed)}.")
    if setup.micro_batch < 1 or setup.seq_len < 1 or setup.num_gpus < 1:
        raise UserError(f"Micro-batch {setup.micro_batch}, sequence {setup.seq_len} and {setup.num_gpus} GPU(s) "
                        "must all be positive.", title="Memory estimate", fix="Pass values of 1 or more.")
    if setup.cp < 1 or setup.num_gpus % setup.cp:
        raise UserError(f"Context parallelism over {setup.cp} GPUs must divide the {setup.num_gpus} GPU(s).",
                        title="Context parallelism", fix="Use a context-parallel size that divides the GPU count.")
    if setup.cp > 1 and setup.strategy not in ("fsdp", "zero2", "zero3"):
        raise UserError("Splitting a sequence over GPUs runs with FSDP2 (context parallelism) or DeepSpeed ZeRO "
                        "(Ulysses sequence parallelism).", title="Context parallelism",
                        fix="Use --strategy fsdp, zero2 or zero3 with context parallelism.")
    if setup.offload != "none" and setup.strategy not in ("fsdp", "zero2", "zero3"):
        raise UserError(f"Offload to host RAM needs a sharded strategy, not '{setup.strategy}'.",
                        title="Offload", fix="Use --strategy zero2, zero3 or fsdp with offload.")
    if setup.offload == "params" and setup.strategy == "zero2":
        raise UserError("ZeRO-2 does not offload parameters.", title="Offload",
                        fix="Use zero3 (or fsdp) for parameter offload, or offload only the optimizer.")


def estimate(model: ModelSpec, setup: TrainSetup, budget: int, *, grad_accum: int = 1,
             vllm_utilization: float = 0.0) -> MemoryEstimate:
    """Peak bytes on one device for a training step, by component, and whether it fits `budget`.

    `grad_accum`: micro-steps per optimizer step. Above 1, the gradients of the earlier
    micro-steps are held through the later ones' forward and backward; for GRPO it is also how
    many micro-steps one generation feeds (GRPOConfig's steps_per_generation defaults to it), so
    the generation batch grows with it. `vllm_utilization` (GRPO): the share of the device a
    colocated vLLM takes (0: generate with transformers)."""
    _validate(setup)
    if grad_accum < 1:
        raise UserError(f"Gradient accumulation of {grad_accum} micro-steps.", title="Memory estimate",
                        fix="Pass 1 or more.")
    if setup.task != "sft" and (setup.reference, setup.method == "full") in (("copy", False), ("adapter", True)):
        # A what-if over the method (the no-fit advice's "with LoRA", "full fine-tuning") keeps the
        # task's reference as that method holds it: LoRA's is its disabled adapter, full's a copy.
        setup = replace(setup, reference="adapter" if setup.method != "full" else "copy")
    tasks.validate(model, setup, grad_accum, vllm_utilization)
    task_setup, setup = setup, tasks.policy_setup(setup)  # the step the policy runs
    notes: list[str] = []
    if attention_kernel(model, setup) != setup.attention:
        notes.append(f"{model.model_type} has no SDPA path in transformers: eager attention (s^2 per layer)")
    trainable = trainable_params(model, setup)
    states = model_states(model, setup, trainable)
    notes += states.notes
    buffers = _strategy_buffers(model, setup, trainable)
    step = _step_tensors(model, per_rank(setup))  # a context-parallel rank: 1/cp of each sequence
    offloaded = offloaded_activations(model, setup)
    if setup.cp > 1 or offloaded:
        one_layer = offloaded / model.num_layers  # (what comes back for a layer's backward)
        step = replace(step, activations=step.activations - offloaded, restored=one_layer,
                       stash=min(offload_stash_bytes(model, setup), one_layer),
                       layer_backward=step.layer_backward + ring_buffers(model, setup))
        if setup.cp > 1:
            notes.append(f"{'context' if setup.strategy == 'fsdp' else 'Ulysses sequence'} parallelism: each of "
                         f"{setup.cp} GPUs holds 1/{setup.cp} of every sequence")
        if offloaded:
            notes.append(f"activation offloading: {offloaded / GiB:.1f} GiB of saved activations in host RAM")
    # The vision tower's pixels and saved tensors live through the step like the decoder's.
    step = replace(step, activations=step.activations + vision.saved_bytes(model, setup, vision.tower_trains(model, setup)))
    if setup.task == "orpo":  # ORPO's trainer builds the full logits instead of TRL's fused head
        step = replace(step, head_fwd=tasks.orpo_head_bytes(model, setup, "forward"),
                       head_bwd=tasks.orpo_head_bytes(model, setup, "backward"))
    if fused_in_backward(setup.optimizer):
        phases = _fused_phases(model, setup, states, step)
    else:
        phases = _phases(states, buffers, step)
    if vision.forward_bytes(model, setup):
        phases["forward (vision tower)"] = (states.weights + states.optimizer + buffers.ddp_buckets + buffers.gathered_fwd
                                            + vision.saved_bytes(model, setup, False) + vision.forward_bytes(model, setup))
    if grad_accum > 1 and not fused_in_backward(setup.optimizer):
        phases = _accumulating(phases, states, step)
    components: dict[str, float] = {}
    host_task = 0.0
    if task_setup.task != "sft":
        phases, components, host_task = _task_phases(model, task_setup, setup, states, buffers, step, phases,
                                                     budget, grad_accum, vllm_utilization)
        notes += _task_notes(task_setup, components, grad_accum, bool(vllm_utilization))
    peak_at = max(phases, key=lambda k: phases[k])
    tensors = phases[peak_at]
    reserve = expected_peak(tensors + buffers.deepspeed, setup.device, setup.data_parallel)
    calibrated = (setup.calibration or {}).get(setup.strategy)
    factor = calibrated.factor if calibrated else 1.0
    total = reserve.total * factor
    if calibrated:
        notes.append(f"peak {calibrated.label}")
    overhead = total - tensors
    return MemoryEstimate(
        params=int(states.weights + max(buffers.gathered_fwd, buffers.gathered_bwd)),
        grads=int(states.grads + buffers.ddp_buckets), optimizer=int(states.optimizer + states.optimizer_temp),
        activations=int(step.activations + step.restored + step.layer_backward),
        logits=int(max(step.head_fwd, step.head_bwd)),
        overhead=int(overhead), total=int(total),
        host_ram=int(_host_ram(model, setup, states.host + offloaded) + host_task),
        budget=int(budget), fits=total <= budget, trainable_params=int(trainable), total_params=int(model.total_params),
        notes=notes, peak_at=peak_at, phases={key: int(value) for key, value in phases.items()},
        tensor_peak=reserve.tensor_peak, reserved_parts=dict(reserve.parts),
        calibration=calibrated.label if calibrated else "", calibration_factor=factor,
        components={key: int(value) for key, value in components.items()},
    )


def reference_options(model: ModelSpec, setup: TrainSetup, budget: int, *, grad_accum: int = 1,
                      vllm_utilization: float = 0.0) -> dict[Reference, MemoryEstimate]:
    """The estimate under each reference the task and method allow, for the planner to compare:
    DPO and KTO: copy or precompute (full fine-tuning), adapter or precompute (LoRA/QLoRA); GRPO:
    copy or adapter, and none (beta 0, no KL term); ORPO: none."""
    if setup.task == "sft":
        return {}
    allowed: list[Reference] = [ref for ref in tasks.REFERENCES[setup.task]
               if not (ref == "copy" and setup.method != "full") and not (ref == "adapter" and setup.method == "full")]
    return {ref: estimate(model, replace(setup, reference=ref), budget, grad_accum=grad_accum,
                          vllm_utilization=vllm_utilization) for ref in allowed}


def _accumulating(phases: dict[str, float], states: ModelStates, step: _StepTensors) -> dict[str, float]:
    """The phases of a micro-step after the first: the gradients accumulated so far are held
    through its forward and backward (each new gradient is added into them in place, so the LM
    head's and the embedding's come and go instead of piling up)."""
    held = {"forward (last layer)": states.grads, "forward (LM head)": states.grads,
            "forward (vision tower)": states.grads, "backward (LM head)": states.grads,
            "backward (last layer)": states.grads - step.lm_grad,
            "backward (first layer)": step.embedding_grad}
    return {name: value + max(0.0, held.get(name, 0.0)) for name, value in phases.items()}


def _task_phases(model: ModelSpec, task_setup: TrainSetup, policy: TrainSetup, states: ModelStates,
                 buffers: _Buffers, step: _StepTensors, phases: dict[str, float], budget: int,
                 grad_accum: int, vllm_utilization: float
                 ) -> tuple[dict[str, float], dict[str, float], float]:
    """The task's phases beside the policy's step, the named terms, and host RAM it adds.

    Every phase of the policy's step also holds the reference copy (and for GRPO the buffered
    generation batch); the task adds the phases of its forwards without grad (the reference's,
    KTO's KL pass, the precompute pass) and GRPO's generation. `policy` is the policy's setup
    (tasks.policy_setup), `task_setup` the one asked about."""
    task, reference = task_setup.task, task_setup.reference
    ref_device, ref_host = tasks.reference_weights(model, task_setup)
    resident = states.weights + states.optimizer + buffers.ddp_buckets
    rows = policy.micro_batch  # sequences of one policy forward (pairs already doubled)
    seq = policy.seq_len
    scored = None  # every shifted position (the CPU scores them all)
    if policy.device == "cuda":  # TRL's fused head scores the labelled (completion) tokens only
        completion = (tasks.prompt_completion(task_setup)[1] if task == "grpo"
                      else seq - task_setup.prompt_len if task_setup.prompt_len else seq)
        scored = rows * min(completion, seq - 1)
    top1 = task == "dpo"  # DPO's policy head computes is_top1 (its reference copy's does not)
    policy_cache = tasks.autocast_weight_cache(model, policy)
    components: dict[str, float] = {}
    if ref_device or ref_host:
        components["reference copy"] = ref_device or ref_host
    held = ref_device
    if task == "grpo":
        gen_rows = tasks.generation_rows(task_setup, grad_accum)
        held += tasks.generation_batch_bytes(task_setup, gen_rows)
    share = tasks.vllm_share(budget, vllm_utilization) if vllm_utilization else 0.0
    if share:
        components["vLLM colocate share"] = share
    out = {name: value + held + share for name, value in phases.items()}
    # a later micro-step's no-grad forwards run beside the gradients accumulated so far
    accumulated = states.grads if grad_accum > 1 else 0.0

    def reference_forward() -> float:
        """One no-grad forward of the reference over the policy's batch: a copy (built in the
        policy's dtype, so cast like it under autocast; gathered as TRL wraps it) or the policy
        with its adapter disabled."""
        gathered = tasks.reference_gathered(model, task_setup, buffers.gathered_fwd)
        return gathered + policy_cache + tasks.forward_working(model, policy, rows, seq, adapters=False,
                                                                scored=scored, top1=top1 and reference != "copy")

    if task in ("dpo", "kto") and reference != "precompute":
        working = reference_forward()
        components["reference forward"] = working
        # under no_grad, after the policy's forward: its activations are still held
        out["reference forward"] = (resident + held + share + accumulated + buffers.gathered_fwd + step.activations
                                    + working)
    if task == "kto":
        kl = policy_cache + tasks.forward_working(model, policy, rows, seq, scored=scored)
        components["KL pass"] = kl
        out["KL pass (policy, no grad)"] = resident + held + accumulated + buffers.gathered_fwd + kl
    if reference == "precompute":
        # In __init__, before the optimizer exists: the policy as loaded, one no-grad forward of a
        # training micro-batch. ZeRO-2: DeepSpeed's stage-0 inference engine casts it to the half
        # dtype; ZeRO-3: sharded, gathered module by module; FSDP: the policy is not sharded before
        # train(), so full fine-tuning loads a reference for the pass (sharded as one unit, gathered
        # whole) and LoRA runs the whole policy.
        lay = layout(model, policy)
        adapters = states.weights - model.total_params * lay.weight if policy.method != "full" else 0.0
        if policy.strategy == "zero2":
            weights = model.total_params * lay.compute + adapters / lay.trainable * lay.compute
        elif policy.strategy == "zero3":
            weights = states.weights + buffers.gathered_fwd
        elif policy.strategy == "fsdp" and policy.method == "full":
            weights = model.total_params * (lay.weight / policy.num_gpus + lay.compute)
        elif policy.strategy == "fsdp":
            weights = states.weights * policy.num_gpus
        else:
            weights = states.weights
        cache = policy_cache if policy.strategy in ("single", "ddp") else 0.0
        working = tasks.forward_working(model, policy, rows, seq, adapters=False, scored=scored, top1=top1)
        components["reference precompute pass"] = weights + cache + working
        out["reference precompute (before training)"] = weights + cache + working
    if task == "grpo":
        prompt, completion = tasks.prompt_completion(task_setup)
        gathered = buffers.gathered_fwd + tasks.generation_gathered(model, policy)
        if not share:
            kv = tasks.kv_cache_bytes(model, policy, gen_rows, prompt + completion)
            sampling = tasks.sampling_bytes(model, policy, gen_rows)
            components["generation KV cache"] = kv
            components["sampling logits"] = sampling
            if gathered - buffers.gathered_fwd:
                components["generation weights gathered (ZeRO-3)"] = gathered - buffers.gathered_fwd
            base = resident + held + gathered + tasks.autocast_weight_cache(model, policy, lm_head=True)
            out["generation (prefill)"] = (base + tasks.kv_cache_bytes(model, policy, gen_rows, prompt)
                                           + tasks.forward_working(model, policy, gen_rows, prompt, scored=0)
                                           + gen_rows * model.vocab_size * layout(model, policy).compute)
            out["generation (last token)"] = (base + kv + tasks.kv_step_bytes(model, policy, gen_rows,
                                                                              prompt + completion)
                                              + tasks.forward_working(model, policy, gen_rows, 1, scored=0)
                                              + sampling)
        if reference != "none":
            working = reference_forward()
            components["reference forward"] = working
            out["reference pass"] = resident + held + share + buffers.gathered_fwd + working
        if share:  # vLLM's importance-sampling correction scores the old policy on every generation batch
            working = policy_cache + tasks.forward_working(model, policy, rows, seq, scored=scored)
            out["old-policy pass"] = resident + held + share + buffers.gathered_fwd + working
    return out, components, ref_host


def _task_notes(setup: TrainSetup, components: dict[str, float], grad_accum: int, vllm: bool) -> list[str]:
    """What the task's step is, then one line per named task term, for the plan to show."""
    rows = tasks.generation_rows(setup, grad_accum)
    words = {"dpo": "DPO: chosen and rejected in one batch (twice SFT's sequences)",
             "orpo": "ORPO: chosen and rejected in one batch, with the full logits (no fused LM head)",
             "kto": "KTO: a no-grad KL pass over mismatched completions before the policy's forward",
             "grpo": (f"GRPO: {'vLLM generates' if vllm else 'generation of'} {rows} sequences at once "
                      f"(micro-batch {setup.micro_batch} x {grad_accum} accumulation steps: a larger batch "
                      "through accumulation generates more at once), then the policy step on prompt + completion")}
    notes = [words[setup.task]]
    notes += [f"{name} {value / GiB:.2f} GiB" for name, value in components.items()]
    return notes


@dataclass(frozen=True)
class _Buffers:
    """What the strategy adds: DDP buckets, gathered units, DeepSpeed's communication buckets."""

    ddp_buckets: float = 0.0
    deepspeed: float = 0.0
    gathered_fwd: float = 0.0
    gathered_bwd: float = 0.0


def _strategy_buffers(model: ModelSpec, setup: TrainSetup, trainable: int) -> _Buffers:
    lay = layout(model, setup)
    h = model.hidden_size
    if setup.strategy == "ddp":  # gradient_as_bucket_view=False (accelerate's default)
        return _Buffers(ddp_buckets=trainable * lay.trainable)
    if setup.strategy == "fsdp":
        # accelerate's FSDP2 layout: a unit per decoder layer, resharded after forward; the final
        # norm and LM head (with a tied embedding: the embedding too) in a unit that is not.
        unit = _unit_bytes(model, setup, model.layer_params)
        tail = _unit_bytes(model, setup, model.lm_head_params or model.embedding_params)
        # forward, at the LM head: the tail, and the last layer prefetched for backward; in a
        # layer's backward: that layer, the next one prefetched, and its unsharded gradients
        return _Buffers(gathered_fwd=tail + unit, gathered_bwd=tail + 2 * unit + (
            model.layer_params * lay.compute if setup.method == "full" else 0.0))
    if setup.strategy not in ("zero2", "zero3"):
        return _Buffers()
    reduce_bucket = min(h * h, trainable)  # HF's "auto" reduce_bucket_size: hidden_size^2
    factor = DEEPSPEED["overlap_factor"] if setup.device == "cuda" else 1.0
    if setup.strategy == "zero2":
        return _Buffers(deepspeed=factor * 2 * (reduce_bucket + min(DEEPSPEED["allgather_bucket"], trainable)))
    widest = max(model.embedding_params, model.lm_head_params, max(lin.d_in * lin.d_out for lin in model.linears))
    # ZeRO-3 gathers one module at a time plus the prefetch bucket ("auto": 0.9 hidden^2);
    # DeepSpeed's estimator counts the largest module's weights and gradients.
    gathered_fwd = _unit_bytes(model, setup, widest) + 0.9 * h * h * lay.compute
    return _Buffers(deepspeed=factor * 2 * reduce_bucket, gathered_fwd=gathered_fwd,
                    gathered_bwd=gathered_fwd + (widest * lay.compute if setup.method == "full" else 0.0))


@dataclass(frozen=True)
class _StepTensors:
    """Activations, the LM head's buffers and the gradients that come and go during backward."""

    activations: float
    head_fwd: float
    head_bwd: float
    layer_backward: float
    lm_grad: float                    # the LM head's weight gradient (full fine-tuning)
    tied_extra: float                 # a tied embedding's dense gradient, per shard
    embedding_grad: float             # the embedding's gradient, not yet there at the first layer
    last_layer: float                 # what the first layer's backward still holds of the forward
    adapter_fwd: float                # the widest LoRA adapter's forward temporaries
    restored: float = 0.0             # activation offloading: the last layer's tensors, back for its backward
    stash: float = 0.0                # activation offloading: what the forward stash holds until backward's first hook


def _step_tensors(model: ModelSpec, setup: TrainSetup) -> _StepTensors:
    lay = layout(model, setup)
    shards = setup.grad_shards
    h, vocab = model.hidden_size, model.vocab_size
    full = setup.method == "full"
    lm_grad = 0.0
    if full:  # the head's weight gradient arrives first and stays through backward
        # (FSDP2: unsharded, in the gathered dtype, until the root's reduce-scatter at the end)
        lm_grad = vocab * h * (lay.compute if setup.strategy == "fsdp" else lay.trainable / shards)
    tied_extra = 0.0
    if full and model.tie_embeddings:
        # embedding backward builds a dense [vocab, hidden] gradient that is summed into the head's
        tied_extra = vocab * h * lay.trainable
    # the embedding's gradient appears only after the first layer's backward (tied: it is the head's)
    embedding_grad = model.embedding_params * lay.trainable / shards if full and not model.tie_embeddings else 0.0
    tokens = setup.micro_batch * setup.seq_len
    last_layer: float
    if setup.checkpointing:
        last_layer = tokens * lay.stream * h
    else:
        last_layer = tokens * layer_token_bytes(model, setup) + weight_copy_bytes(model, setup)
    return _StepTensors(activation_bytes(model, setup), logits_bytes(model, setup, "forward"),
                        logits_bytes(model, setup, "backward"), layer_backward_bytes(model, setup), lm_grad,
                        tied_extra / shards, embedding_grad, last_layer, adapter_forward_bytes(model, setup))


def _phases(states: ModelStates, buffers: _Buffers, step: _StepTensors) -> dict[str, float]:
    """Tensor bytes at each phase of the step: gradients and activations peak at opposite ends."""
    resident = states.weights + states.optimizer + buffers.ddp_buckets
    fwd, bwd = buffers.gathered_fwd, buffers.gathered_bwd
    return {
        "forward (last layer)": resident + fwd + step.activations + step.adapter_fwd,
        "forward (LM head)": resident + fwd + step.activations + step.stash + step.head_fwd,
        "backward (LM head)": resident + fwd + step.activations + step.head_bwd,
        "backward (last layer)": (resident + bwd + step.activations + step.restored + step.lm_grad
                                  + step.layer_backward),
        "backward (first layer)": (resident + bwd + step.last_layer + states.grads - step.embedding_grad
                                   + step.layer_backward),
        "backward (embedding)": resident + bwd + states.grads + step.tied_extra,
        "optimizer step": resident + states.grads + states.optimizer_temp,
    }


def _fused_phases(model: ModelSpec, setup: TrainSetup, states: ModelStates, step: _StepTensors) -> dict[str, float]:
    """The phases when the optimizer updates inside backward (AdaLomo, one process): no gradients
    pile up. Each parameter's hook applies the gradient finished before it, so a weight's update
    (llmwizard.autotune.memory.savers.fused_update_temp, with two gradients alive) comes right after its
    own backward: the LM head's once the head's buffers are gone, a layer's beside the layer's
    backward, the embedding's last (lomo_optim's closing `grad_func(0)`), after the activations."""
    grad = layout(model, setup).trainable

    def update(params: int, following: int) -> float:
        # The weight's gradient is dropped once copied to fp32 (its 3 fp32 tensors cover the
        # copy); the gradient that fired the hook, of the parameter before it in the model, stays.
        return fused_update_temp(params) + grad * following

    full = setup.method == "full"
    head = max(model.lm_head_params, model.embedding_params) if full else widest_update(model, setup)
    layer = widest_update(model, setup)
    resident = states.weights + states.optimizer
    # A tied head's gradient is only finished at the embedding: autograd holds the head's part
    # until then, and the weight is updated once, last.
    waiting = step.lm_grad if full and model.tie_embeddings else 0.0
    phases = {
        "forward (LM head)": resident + step.activations + step.stash + step.head_fwd,
        "backward (LM head)": resident + step.activations + step.head_bwd,
        "backward (LM head update)": resident + step.activations + update(head, model.hidden_size),
        "backward (last layer)": (resident + step.activations + step.restored + step.layer_backward + waiting
                                  + update(layer, layer)),
        "backward (first layer)": resident + step.last_layer + step.layer_backward + waiting + update(layer, layer),
        "backward (embedding)": resident + update(head if full else layer, 0),
    }
    if waiting:
        del phases["backward (LM head update)"]
    return phases


def _host_ram(model: ModelSpec, setup: TrainSetup, host_states: float) -> float:
    """Host RAM per node: offloaded states (with DeepSpeed's 1.5x for pinned buffers), one copy of
    the weights while the checkpoint loads, and each process's own footprint."""
    lay = layout(model, setup)
    local = min(setup.gpus_per_node or setup.num_gpus, setup.num_gpus)
    checkpoint_bytes = 4 if setup.method == "full" and lay.weight == 4 else lay.compute  # export.py's `dtype`
    host_ram = host_states * local * DEEPSPEED["host_buffer_factor"] + model.total_params * checkpoint_bytes
    if setup.device == "cuda":
        host_ram += OVERHEAD["cpu_process"] * local
    return host_ram


def _unit_bytes(model: ModelSpec, setup: TrainSetup, params: int) -> float:
    """One gathered block of `params` parameters, in the dtype it is gathered in."""
    if setup.method == "qlora":
        return params * NF4_BYTES
    return params * layout(model, setup).compute
