"""What DPO, ORPO, KTO and GRPO add to a training step's memory, per device, from TRL 1.16's trainers.

llmwizard.autotune.memory sizes the policy's own step with the SFT model (activations, the LM
head, model states) at the shape the task really trains (`policy_setup`), then adds the phases
and terms here. Each term says where in TRL's code it comes from; docs/tasks-memory.md gathers
them, bench/task_memory.py measures them with the real trainers on the CPU.

- DPO (trl/trainer/dpo_trainer.py): DataCollatorForPreference puts the chosen and the rejected
  sequences of a micro-batch of pairs in ONE batch (chosen first), and `_compute_loss` runs the
  policy forward on it with TRL's fused LM head: an SFT step at twice the sequences. Then, under
  no_grad and with the policy's activations still held, the reference forward on the same batch:
  `self.ref_model` (a second model, `reference: copy`) or the policy itself inside
  `use_adapter(model, None)` (the adapter disabled, `reference: adapter`). With
  `precompute_ref_log_probs` (`reference: precompute`) the reference forward runs once over the
  dataset in `__init__`, before the optimizer exists, on the policy itself (no second model),
  and the step reads the log-probs from the batch.
- ORPO (trl/experimental/orpo/orpo_trainer.py): `concatenated_forward` concatenates chosen and
  rejected too, but calls the model's own forward: the full logits [2 x pairs, seq, vocab] are
  built, a cross-entropy over the chosen half and `selective_log_softmax` over both read them.
  No reference model.
- KTO (trl/trainer/kto_trainer.py): rows, not pairs. `_compute_kl_logps` first runs the policy
  under no_grad on the KL batch (each prompt with the next row's completion), then the policy
  forward with grad, then the reference on the KL batch and on the batch, all under no_grad.
- GRPO (trl/trainer/grpo_trainer.py): every `steps_per_generation` micro-steps (GRPOConfig's
  default: gradient_accumulation_steps) `_generate_and_score_completions` generates the
  completions of the whole generation batch at once (per device: micro_batch x
  steps_per_generation sequences, `model.generate` with a DynamicCache), then scores the
  reference log-probs in chunks of micro_batch rows under no_grad; each micro-step trains on
  micro_batch completions of prompt + completion tokens. With vLLM colocated, vLLM's engine holds
  `vllm_gpu_memory_utilization` of the GPU for the whole run and generates in it.

Where the reference lives (the `reference` choice, TRL's `prepare_deepspeed`/`prepare_fsdp` in
trl/models/utils.py): a copy is built with the policy's dtype (`create_model_from_path(...,
dtype=self.model.dtype)`); `accelerator.prepare_model(evaluation_mode=True)` puts it whole on each
device for one process or DDP; under ZeRO-1/2 DeepSpeed wraps it at stage 0 (whole, cast to the
half dtype), under ZeRO-3 at stage 3 (sharded like the policy, gathered module by module); under
FSDP2 `fully_shard(ref_model)` makes the WHOLE model one unit, so its forward gathers every
weight at once (resharded after).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.memory.activations import LM_HEAD_TILE, adapted_linears, layout, weight_copy_bytes
from llmwizard.autotune.memory.savers import pure_bf16
from llmwizard.autotune.model.model_types import ModelSpec
from llmwizard.autotune.train_setup import TrainSetup
from llmwizard.autotune.schema import Reference

# Trainers whose config turns dropout off in the model (and the reference): DPOConfig, KTOConfig and
# ORPOConfig `disable_dropout=True`; GRPOConfig's default is False. `disable_dropout_in_model` sets
# every nn.Dropout's p to 0, LoRA's too, and torch's dropout returns its input untouched at p=0.
DROPOUT_OFF = ("dpo", "kto", "orpo")
# Which reference each task may use (Plan._task_consistent says the same to the user).
REFERENCES: dict[str, tuple[Reference, ...]] = {
    "dpo": ("copy", "adapter", "precompute"),
    "kto": ("copy", "adapter", "precompute"),
    "orpo": ("none",),
    "grpo": ("copy", "adapter", "none"),
}
# vLLM colocated with training (GRPOConfig `vllm_mode="colocate"`): its default share of the GPU.
VLLM_DEFAULT_UTILIZATION = 0.3


def validate(model: ModelSpec, setup: TrainSetup, grad_accum: int, vllm_utilization: float) -> None:
    """Refuse a task setup the trainers would refuse, naming the value and the fix."""
    title = "Task memory"
    if setup.task == "sft":
        if setup.reference != "none" or setup.num_generations or vllm_utilization:
            raise UserError("A reference model, generations or vLLM are settings of the preference and reward "
                            "tasks, not of SFT.", title=title, fix="Pass --task dpo, orpo, kto or grpo, or drop them.")
        return
    allowed = REFERENCES[setup.task]
    if setup.reference not in allowed:
        raise UserError(f"{setup.task.upper()} cannot take reference '{setup.reference}'.", title=title,
                        fix=f"Use one of: {', '.join(allowed)}.")
    if setup.reference == "copy" and setup.method != "full":
        raise UserError(f"reference copy with method {setup.method}: the {setup.method.upper()} policy with its "
                        "adapter disabled is the reference already.", title=title, fix="Use reference adapter.")
    if setup.reference == "adapter" and setup.method == "full":
        raise UserError("reference adapter with full fine-tuning: there is no adapter to disable.", title=title,
                        fix="Use reference copy or precompute, or method lora.")
    # (KTO runs at micro-batch 2 or more: the planner's search and plan.yaml's rules keep it there)
    if setup.task == "grpo":
        if setup.completion_len < 1 or setup.num_generations < 1:
            raise UserError(f"GRPO needs a completion length and generations per prompt (got completion "
                            f"{setup.completion_len}, {setup.num_generations} generations).", title=title,
                            fix="Set completion_len and num_generations to 1 or more.")
        if not 0 <= vllm_utilization < 1:
            raise UserError(f"vLLM's GPU memory utilization {vllm_utilization:g} must be a share of the GPU "
                            "(0 to below 1).", title=title, fix="Use e.g. 0.3, TRL's default.")
        if vllm_utilization and setup.device != "cuda":
            raise UserError("vLLM colocates on GPUs only.", title=title, fix="Drop vLLM on the CPU.")
    elif vllm_utilization:
        raise UserError(f"vLLM generates GRPO's completions; task {setup.task} generates nothing.",
                        title=title, fix="Drop vLLM, or pass --task grpo.")
    del model, grad_accum


def prompt_completion(setup: TrainSetup) -> tuple[int, int]:
    """GRPO's prompt and completion tokens: prompt_len (or what seq_len leaves) and completion_len."""
    prompt = setup.prompt_len or max(1, setup.seq_len - setup.completion_len)
    return prompt, setup.completion_len


def policy_setup(setup: TrainSetup) -> TrainSetup:
    """The SFT step the policy really runs: DPO and ORPO put chosen and rejected in one batch
    (twice the sequences), GRPO trains on prompt + completion; DPO, KTO and ORPO run without
    dropout. SFT's setup is returned unchanged."""
    if setup.task == "sft":
        return setup
    policy = replace(setup, lora_dropout=0.0) if setup.task in DROPOUT_OFF else setup
    if setup.task in ("dpo", "orpo"):
        return replace(policy, micro_batch=2 * setup.micro_batch)
    if setup.task == "grpo":
        prompt, completion = prompt_completion(setup)
        return replace(policy, seq_len=prompt + completion)
    return policy


def sequences(setup: TrainSetup) -> int:
    """Sequences in one forward of the policy (and of its reference): pairs count twice."""
    return setup.micro_batch * (2 if setup.task in ("dpo", "orpo") else 1)


# ----------------------------------------------------------------------------- the reference model

def _linear_params(model: ModelSpec) -> int:
    return model.num_layers * sum(lin.d_in * lin.d_out for lin in model.linears)


def reference_weights(model: ModelSpec, setup: TrainSetup) -> tuple[float, float]:
    """(device, host RAM) bytes of the reference copy, held for the whole run.

    Built in the policy's dtype (fp32 under mixed precision, bf16 under pure bf16). One process
    or DDP: whole on every device. ZeRO-1/2: DeepSpeed's stage-0 engine, whole and cast to the
    half dtype. ZeRO-3: sharded like the policy in the half dtype; with parameter offload
    (prepare_deepspeed keeps `offload_param`) the shards sit in host RAM. FSDP2: sharded in the
    policy's dtype; CPU offload moves the shards to host RAM."""
    if setup.task == "sft" or setup.reference != "copy":
        return 0.0, 0.0
    lay = layout(model, setup)
    if setup.strategy in ("zero2", "zero3"):
        whole = float(model.total_params * lay.compute)
        if setup.strategy == "zero2":
            return whole, 0.0
        shard = whole / setup.num_gpus
        return (0.0, shard) if setup.offload == "params" else (shard, 0.0)
    whole = float(model.total_params * lay.weight)
    if setup.strategy == "fsdp":
        shard = whole / setup.num_gpus
        return (0.0, shard) if setup.offload != "none" else (shard, 0.0)
    return whole, 0.0


def reference_gathered(model: ModelSpec, setup: TrainSetup, module_gather: float) -> float:
    """What the reference copy's forward gathers beyond its resting shards: FSDP2 gathers the
    whole model at once (prepare_fsdp wraps it as one unit), in the gather dtype; ZeRO-3 one
    module and its prefetch (`module_gather`, the policy's figure: same model, same config)."""
    if setup.reference != "copy":
        return 0.0
    if setup.strategy == "fsdp":
        return model.total_params * layout(model, setup).compute
    if setup.strategy == "zero3":
        return module_gather
    return 0.0


def autocast_weight_cache(model: ModelSpec, setup: TrainSetup, *, lm_head: bool = False) -> float:
    """Half-precision copies of fp32 weights that autocast keeps through one forward.

    torch's autocast caches the cast of a leaf tensor that requires grad (autocast_mode.cpp,
    `cached_cast`) until the autocast region exits, and accelerate wraps each forward call in its
    own region. A model in fp32 under mixed precision (full fine-tuning with one process or DDP:
    the policy, and a reference copy built in its dtype, whose weights still require grad) so
    holds a half copy of every linear weight by the end of any forward, with or without grad:
    the reference forward, KTO's KL pass, the precompute pass, each generation step. `lm_head`:
    the head's weight too, when the model's own forward runs it as a linear (generate(); TRL's
    fused head casts vocabulary chunks, views that autocast does not cache)."""
    lay = layout(model, setup)
    if not lay.autocast_copies:
        return 0.0
    head = model.vocab_size * model.hidden_size * lay.compute if lm_head else 0.0
    return weight_copy_bytes(model, setup) * model.num_layers + head


# ----------------------------------------------------------------------------- forwards without grad

def forward_working(model: ModelSpec, setup: TrainSetup, rows: int, seq: int, *, adapters: bool = True,
                    scored: int | None = None, top1: bool = False) -> float:
    """Transient bytes of one forward under no_grad over `rows` sequences of `seq` tokens (the
    weights and whatever the caller already holds aside): the larger of a decoder layer's
    working set and the fused LM head's, plus the rotary tables.

    HF's Llama-style layer under no_grad keeps nothing for backward. Throughout its MLP it holds
    the embedding output (LlamaModel keeps `inputs_embeds` to the end), the layer's input (the
    caller's reference), the residual and the normed input (in the stream dtype: RMSNorm
    multiplies by its weight); at the product `act(gate) * up`, three intermediate-wide tensors in
    the compute dtype. Active LoRA adapters (the policy's own passes; a disabled adapter runs
    nothing) add, in PEFT's `result + lora_B(lora_A(dropout(x))) * scaling`: at up_proj the
    adapter's output and its scaled copy beside gate's activation and up's result, and at the
    widest adapter (down_proj: the product is its input) the input cast to the adapters' fp32,
    and, with dropout on (GRPO keeps it; the policy is in train mode while it generates),
    dropout's mask and output.
    The head: `head_forward_bytes` over `scored` tokens (None: every shifted position, as the
    CPU scores them; a GPU scores the completion tokens only); 0 skips it (generation keeps one
    position). `top1`: the head computes is_top1 (DPO's policy)."""
    lay = layout(model, setup)
    s, c, h, inter = lay.stream, lay.compute, model.hidden_size, model.intermediate_size
    tokens = rows * seq
    held = 4 * s * h
    layer = held + 3 * c * inter
    adapted = adapted_linears(model, setup) if adapters and setup.method != "full" else []
    if adapted:
        t = lay.trainable
        cast = t if t != c else 0  # PEFT's cast of the input to the adapters' dtype (kept to the end)
        dropout = lay.mask + t if setup.lora_dropout > 0 else 0  # mask and output, gone after lora_A
        widest = max(adapted, key=lambda lin: lin.d_in)
        layer = max(layer, held + c * (widest.d_in + widest.d_out) + (cast + dropout) * widest.d_in)
        if any(lin.name == "up_proj" for lin in adapted):
            layer = max(layer, held + 4 * c * inter + cast * h)
    rope = 2 * model.head_dim * s * seq  # cos and sin [1, seq, head_dim] (no position_ids given)
    scored = rows * (seq - 1) if scored is None else scored
    head = head_forward_bytes(model, setup, tokens, scored, top1=top1) if scored else 0.0
    return max(tokens * layer, head) + rope


def head_forward_bytes(model: ModelSpec, setup: TrainSetup, tokens: int, scored: int, *, top1: bool = False) -> float:
    """TRL's fused LM head forward (trl/kernels/chunked_logprob.py, ChunkedLogProbFunction) under
    no_grad over `scored` of `tokens` positions: the final hidden states and their shifted copy
    (`reshape` of a slice on the CPU, the masked rows on a GPU), seven fp32 statistics per token,
    the chunk-wide matmul buffer `mm_buf` [min(N, 4096), 32768] in the compute dtype, the hidden
    chunk's cast when the stream is wider, and off the GPU the torch fold of a tile: the
    transformed tile, `z - max` and its exp (three fp32 tiles, and `before_target`'s bool mask when
    is_top1 is asked for); a GPU folds the tile in place with Triton."""
    lay = layout(model, setup)
    s, c, h = lay.stream, lay.compute, model.hidden_size
    chunk = min(scored, LM_HEAD_TILE[0])
    cols = min(model.vocab_size, LM_HEAD_TILE[1])
    fold = 0.0 if setup.device == "cuda" else chunk * cols * 4 * (3 + (0.25 if top1 else 0.0))
    cast = chunk * h * c if s != c else 0.0
    return s * h * (tokens + scored) + 7 * 4 * scored + chunk * LM_HEAD_TILE[1] * c + cast + fold


# ----------------------------------------------------------------------------- ORPO's full logits

def orpo_head_bytes(model: ModelSpec, setup: TrainSetup, phase: str) -> float:
    """ORPO's LM head: the model's own forward builds the full logits of chosen and rejected.

    `setup` is the policy's (2 x pairs sequences), `phase` "forward" or "backward". The logits
    [sequences, seq, vocab] leave the model in fp32: accelerate wraps a mixed-precision model's
    forward in `convert_outputs_to_fp32` (and an fp32 model computes them so); only pure bf16
    (no autocast) keeps them bf16. `concatenated_forward` then: `cross_entropy_loss` copies the
    chosen half's shifted logits (`.contiguous()`), whose log_softmax output stays for backward
    (the copy goes once the loss is built); `selective_log_softmax` over both halves keeps nothing
    logits-sized in fp32 (a gather and a logsumexp per row), and in bf16 off the GPU keeps each
    row's log_softmax. Backward, beside what is saved: on the CPU the gather's zeros and its
    scatter_add and the per-row gradients stacked back (three logits-sized tensors); on a GPU
    TRL's Triton kernel (`_fused_logprob_entropy`) writes one gradient and the slicing's zeros
    make the second."""
    rows, seq, vocab = setup.micro_batch, setup.seq_len, model.vocab_size
    element = 2 if pure_bf16(setup) else 4
    logits = rows * seq * vocab * element
    shifted = logits * (seq - 1) / seq           # logits[:, :-1, :]
    chosen = shifted / 2                          # the chosen half's copy, and its log_softmax
    rows_kept = shifted if element == 2 and setup.device != "cuda" else 0.0
    if phase == "forward":
        return logits + 2 * chosen + rows_kept
    return logits + chosen + rows_kept + (2 if setup.device == "cuda" else 3) * shifted


# ----------------------------------------------------------------------------- GRPO's generation

def generation_rows(setup: TrainSetup, grad_accum: int) -> int:
    """Sequences one device generates at once: its micro-batch times steps_per_generation, which
    GRPOConfig sets to gradient_accumulation_steps (the dataloader hands each device
    per_device_train_batch_size x steps_per_generation prompts, each already repeated for its
    group). Raising the batch through grad_accum raises this, not only the step count."""
    return setup.micro_batch * grad_accum


def kv_cache_bytes(model: ModelSpec, setup: TrainSetup, rows: int, tokens: int) -> float:
    """transformers' DynamicCache: keys and values of every layer for `rows` x `tokens`. Values
    are the v projection's output (the compute dtype under autocast); keys are cached after the
    rotary embedding, whose cos/sin tables come in the embeddings' dtype, so an fp32 stream
    (full fine-tuning under autocast) promotes them to fp32."""
    lay = layout(model, setup)
    per_head = model.head_dim * (max(lay.stream, lay.compute) + lay.compute)
    return rows * tokens * model.num_layers * model.num_kv_heads * per_head


def kv_step_bytes(model: ModelSpec, setup: TrainSetup, rows: int, tokens: int) -> float:
    """DynamicLayer.update grows a layer's keys (then values) with torch.cat: for a moment the
    old and the new tensor of one layer coexist (the keys, the wider of the two)."""
    lay = layout(model, setup)
    return rows * tokens * model.num_kv_heads * model.head_dim * max(lay.stream, lay.compute)


def sampling_bytes(model: ModelSpec, setup: TrainSetup, rows: int) -> float:
    """One sampling step of generate(): the last position's logits (compute dtype), their fp32
    copy (`outputs.logits[:, -1].to(copy=True, dtype=torch.float32)`), the softmax's probabilities
    and torch.multinomial's exponential draw, all [rows, vocab]."""
    return rows * model.vocab_size * (layout(model, setup).compute + 3 * 4)


def generation_batch_bytes(setup: TrainSetup, rows: int) -> float:
    """The generation batch GRPO buffers for its micro-steps: prompt and completion ids and masks
    (int64) and per-token fp32 log-probs (reference, old policy) of the completions."""
    prompt, completion = prompt_completion(setup)
    return rows * ((prompt + completion) * 2 * 8 + completion * 2 * 4)


def generation_gathered(model: ModelSpec, setup: TrainSetup) -> float:
    """What generation gathers beyond training's forward: under ZeRO-3 every weight at once
    (GRPOConfig `ds3_gather_for_generation=True`: unwrap_model_for_generation gathers all
    parameters for generate())."""
    return model.total_params * layout(model, setup).compute if setup.strategy == "zero3" else 0.0


def vllm_share(budget: int, utilization: float) -> float:
    """vLLM colocated with training (`vllm_mode="colocate"`) reserves `vllm_gpu_memory_utilization`
    of the device for its weights and KV cache as it starts, and keeps it (unless
    `vllm_enable_sleep_mode`); the share is of the device memory the estimate is given."""
    return budget * utilization


# ----------------------------------------------------------------------------- the precompute pass

@dataclass(frozen=True)
class PrecomputeCost:
    """The pass `reference: precompute` runs before training: one forward over the dataset."""

    flops: float            # 2 x parameters x tokens (a forward, no backward, no recomputation)
    share_of_epoch: float   # of one epoch's training compute with the reference it replaces


def precompute_cost(model: ModelSpec, setup: TrainSetup, dataset_sequences: int) -> PrecomputeCost:
    """Compute of the precompute pass over `dataset_sequences` sequences (pairs count twice)
    of seq_len tokens. Training with a live reference pays that forward every epoch (2 FLOPs per
    parameter and token beside the policy's 6, or 4 with LoRA's frozen base, plus 2 more when
    activations are recomputed); precomputing pays it once, before the first step."""
    tokens = dataset_sequences * setup.seq_len
    forward = 2.0 * model.total_params * tokens
    train = (6.0 if setup.method == "full" else 4.0) + (2.0 if setup.checkpointing else 0.0)
    return PrecomputeCost(forward, 2.0 / (train + 2.0))


__all__ = ["DROPOUT_OFF", "PrecomputeCost", "REFERENCES", "VLLM_DEFAULT_UTILIZATION",
           "autocast_weight_cache", "forward_working", "head_forward_bytes", "generation_batch_bytes", "generation_gathered",
           "generation_rows", "kv_cache_bytes", "kv_step_bytes", "orpo_head_bytes", "policy_setup",
           "precompute_cost", "prompt_completion", "reference_gathered", "reference_weights", "sampling_bytes",
           "sequences", "validate", "vllm_share"]
