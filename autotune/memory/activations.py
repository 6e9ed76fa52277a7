"""Activations and the LM head's buffers: what one micro-batch keeps alive, tensor by tensor.

Derived from the autograd graph of HF's Llama/Qwen2/Gemma2 blocks as the runner trains them and
checked against FakeTensorMode + MemTracker peaks (bench/memory_validation.py). `layout` says in
which dtype each tensor family is stored for a method, strategy and precision; llmwizard.autotune.memory
combines these figures with the model states into the step's peak.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.model.model_types import Linear, ModelSpec
from llmwizard.autotune.memory.savers import pure_bf16
from llmwizard.autotune.train_setup import TrainSetup

# TRL's fused LM head (trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE and
# trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE): one [tokens x vocab] tile at a time.
LM_HEAD_TILE = (4096, 32768)
# NF4 with double quantization (bitsandbytes, use_bnb_nested_quant): 4 bits + an 8-bit absmax per
# 64 weights + an fp32 absmax per 256 blocks.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# Gemma2/3 put a norm before and after both attention and MLP; Llama-style blocks have two.
FOUR_NORM_MODELS = ("gemma2", "gemma3", "gemma3_text")
# Gemma2 softcaps attention scores and final logits (tanh): one more saved tensor per use.
_SOFTCAP_MODELS = ("gemma2",)
# transformers falls back to eager attention for these (`_supports_sdpa = False`: Gemma 2's softcapping,
# gpt-oss's attention sinks).
_NO_SDPA_MODELS = ("gemma2", "gpt_oss")
# Model types whose decoder RMSNorms and gated MLP Liger replaces (liger_kernel.transformers.monkey_patch,
# MODEL_TYPE_TO_APPLY_LIGER_FN). TRL applies these layer kernels with Liger's fused cross-entropy off:
# its own fused LM head stays. For other types transformers applies none.
LIGER_MODELS = ("llama", "mistral", "qwen2", "qwen3", "qwen2_5_vl", "gemma", "gemma2", "gemma3", "gemma3_text")


@dataclass(frozen=True)
class Layout:
    """Bytes per element of each tensor family, as the runner's stack stores them."""

    compute: int       # matmul inputs/outputs (the autocast dtype, or the weights' when no autocast)
    stream: int        # the residual stream between layers
    weight: float      # trainable or base weight storage (mean over the model)
    trainable: int     # trainable parameters and their gradients
    master: int        # extra fp32 master copy held by the optimizer (DeepSpeed mixed precision)
    autocast_copies: bool  # fp32 trainable weights cast per step to half copies saved for backward
    mask: int          # a LoRA dropout mask element (bool on a GPU, the input's dtype on the CPU)


def layout(model: ModelSpec, setup: TrainSetup) -> Layout:
    half = setup.precision in ("bf16", "fp16", "pure_bf16")
    compute = 2 if half else 4
    deepspeed = setup.strategy in ("zero2", "zero3")
    if pure_bf16(setup):  # bf16 weights, gradients and states; no master copy (llmwizard.autotune.memory.savers)
        return Layout(2, 2, 2, 2, 0, False, 0)
    if setup.method == "full":  # (no adapters, no dropout masks)
        if not half:
            return Layout(4, 4, 4, 4, 0, False, 0)
        if deepspeed:  # DeepSpeed casts the module to bf16/fp16 and keeps fp32 masters in the optimizer
            return Layout(2, 2, 2, 2, 4, False, 0)
        if setup.strategy == "fsdp":  # fp32 shards, gathered as bf16 (MixedPrecisionPolicy)
            return Layout(2, 2, 4, 4, 0, False, 0)
        return Layout(2, 4, 4, 4, 0, True, 0)  # export.py: dtype float32 + autocast
    # A LoRA base in the compute dtype; PEFT upcasts adapters to fp32, except where TRL keeps them
    # half (QLoRA, ZeRO-3) or DeepSpeed casts the module (then the optimizer holds fp32 masters).
    trainable = 2 if half and (setup.method == "qlora" or deepspeed) else 4
    master = 4 if half and deepspeed else 0
    linear = _linear_params(model)
    weight: float = compute
    if setup.method == "qlora":
        weight = (linear * NF4_BYTES + (model.total_params - linear) * compute) / model.total_params
    # The dropout runs in the adapter's dtype at compute time: FSDP2 gathers adapters in bf16.
    mask = 1 if setup.device == "cuda" else (compute if setup.strategy == "fsdp" else trainable)
    return Layout(compute, compute, weight, trainable, master, False, mask)


def _linear_params(model: ModelSpec) -> int:
    return model.num_layers * sum(lin.d_in * lin.d_out for lin in model.linears)


def adapted_linears(model: ModelSpec, setup: TrainSetup) -> list[Linear]:
    """The linears LoRA adapts in this setup (every linear when no targets are given)."""
    return [lin for lin in model.linears if setup.lora_targets is None or lin.name in setup.lora_targets]


def trainable_params(model: ModelSpec, setup: TrainSetup) -> int:
    if setup.method == "full":
        return model.total_params
    tower = model.vision.lora_params(setup.lora_r) if model.vision and setup.train_vision_tower else 0
    return model.lora_params(setup.lora_r, setup.lora_targets) + tower


# ----------------------------------------------------------------------------- Mixture of Experts

# The pseudo LoRA target that adapts the routed experts' fused 3-D weights (PEFT target_parameters).
EXPERTS_TARGET = "experts"


def expert_targets(model: ModelSpec, asked: list[str] | None, dropout: float | None) -> list[str]:
    """PEFT `target_parameters` for the routed experts when `experts` is among the LoRA targets.

    The experts are fused 3-D parameters (mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj),
    not nn.Linear modules, so only PEFT's ParamWrapper reaches them, and it refuses dropout."""
    if EXPERTS_TARGET not in (asked or []):
        return []
    if model.moe is None or not model.moe.expert_parameters:
        what = ("has no experts" if model.moe is None
                else "keeps its experts in modules PEFT's target_parameters cannot reach")
        raise UserError(f"LoRA target `{EXPERTS_TARGET}`: {model.name} {what}.", title="LoRA",
                        fix=f"Choose from: {', '.join(model.linear_names)}.")
    if dropout:
        raise UserError(f"lora_dropout {dropout:g} with the `{EXPERTS_TARGET}` LoRA target: PEFT adapts fused expert "
                        "weights through its ParamWrapper, which takes no dropout.", title="LoRA",
                        fix="Set lora_dropout to 0 (the planner's value with experts), or drop `experts` from "
                            "lora_targets.")
    return list(model.moe.expert_parameters)


def moe_lora_note(model: ModelSpec, r: int, experts: list[str]) -> str:
    """What the LoRA reason says about a MoE model's experts: why they stay frozen by default, or
    what adapting them costs."""
    moe = model.moe
    if moe is None:
        return ""
    on_experts = model.num_layers * moe.expert_lora_params(r, model.hidden_size)
    if experts:
        return (f"; the routed experts too ({', '.join(experts)}, PEFT target_parameters): {on_experts:,} of these "
                "parameters, with lora_dropout 0 (PEFT's ParamWrapper takes none)")
    return (f"; attention only on this Mixture-of-Experts model (the planner's default): each token reaches "
            f"{moe.experts_per_token} of {moe.num_experts} experts, so an expert's adapter learns from few tokens, "
            f"and adapters on the routed experts would add {on_experts:,} parameters with their gradients and "
            "optimizer states; add `experts` to lora_targets for them (PEFT target_parameters)")


def experts_train(model: ModelSpec, setup: TrainSetup) -> bool:
    """Whether the routed experts' weights get gradients: full fine-tuning, or LoRA on the experts."""
    return model.moe is not None and (setup.method == "full" or EXPERTS_TARGET in (setup.lora_targets or []))


def moe_token_bytes(model: ModelSpec, setup: TrainSetup) -> float:
    """Bytes one MoE block keeps for backward, per token, in place of the dense gated MLP's.

    From transformers' grouped_mm experts path (integrations/moe.py, grouped_mm_experts_forward,
    the default experts implementation in 5.x) and the top-k routers of modeling_qwen3_moe /
    modeling_mixtral / modeling_gpt_oss, checked on fake tensors (tests/test_moe.py):
    - the router: its logits [tokens, experts] in the compute dtype and the fp32 softmax output
      (gpt-oss's softmax runs over the top-k only), the top-k values and int64 indices;
    - top-k dispatch: each token is copied once per chosen expert (tokens x k rows, sorted by expert),
      with int64 sort and scatter indices per row;
    - per routed row the gated MLP's tensors: gate, activation and up outputs (3 x I), and the
      expert output kept for the routing weight's product (H);
    - when the expert weights train, the grouped GEMMs' inputs too: the gathered row (H) and the
      down projection's input (I)."""
    moe = model.moe
    if moe is None:
        return 0.0
    c = layout(model, setup).compute
    h, inter, experts, k = model.hidden_size, moe.expert_intermediate_size, moe.num_experts, moe.experts_per_token
    softmax = 4 * (k if moe.kind == "gpt_oss" else experts)
    router = c * experts + softmax + k * (4 + 8) + (c * h if setup.method == "full" else 0)
    row = 3 * c * inter + c * h + 2 * 8 + c
    if experts_train(model, setup):
        row += c * h + c * inter
    shared = 3 * c * moe.shared_intermediate_size + c if moe.shared_expert_params else 0  # + its gate
    return router + k * row + shared


def moe_backward_bytes(model: ModelSpec, setup: TrainSetup) -> float:
    """Transient bytes while one MoE block runs backward: the gradients of each routed row's MLP
    tensors and gathered input (tokens x k rows), and the fused expert weights' gradient when they
    train (one [experts, 2I, H] tensor, the widest a MoE layer makes)."""
    moe = model.moe
    if moe is None:
        return 0.0
    lay = layout(model, setup)
    rows = setup.micro_batch * setup.seq_len * moe.experts_per_token
    transient = rows * lay.compute * (3 * moe.expert_intermediate_size + model.hidden_size)
    if setup.method == "full":
        transient += moe.num_experts * 2 * moe.expert_intermediate_size * model.hidden_size * lay.trainable
    return transient


def moe_aux_loss_bytes(model: ModelSpec, setup: TrainSetup) -> float:
    """The load-balancing loss (transformers' load_balancing_loss_func), when the config turns it on
    (output_router_logits): every layer's router logits stay to the end of the forward, and the loss
    builds an fp32 softmax and an int64 one-hot of the top-k choices over all layers' tokens at once."""
    moe = model.moe
    if moe is None or not moe.aux_loss:
        return 0.0
    c = layout(model, setup).compute
    tokens = setup.micro_batch * setup.seq_len
    return tokens * model.num_layers * moe.num_experts * (c + 4 + 8 * moe.experts_per_token)


def liger_layers(model: ModelSpec, setup: TrainSetup) -> bool:
    """Whether Liger's RMSNorm and gated-MLP kernels replace HF's in this model's decoder layers."""
    return setup.liger and model.model_type in LIGER_MODELS


def _norm_saved(model: ModelSpec, setup: TrainSetup, reads_stream: bool = True) -> float:
    """Bytes one RMSNorm keeps per token. HF's saves its fp32 input, the inverse RMS and (when its
    weight trains) the normalised tensor. Liger's saves its input as it came (the residual stream, or
    a block's output in the compute dtype) and an fp32 inverse RMS per row, and recomputes the rest."""
    lay = layout(model, setup)
    h = model.hidden_size
    if liger_layers(model, setup):
        return (lay.stream if reads_stream else lay.compute) * h + 4
    normalised = (4 if model.model_type.startswith("gemma") else lay.stream) if setup.method == "full" else 0
    return 4 * h + normalised * h + 8


def attention_kernel(model: ModelSpec, setup: TrainSetup) -> str:
    """The kernel that really runs: transformers uses eager where a model does not support SDPA."""
    if setup.attention == "sdpa" and model.model_type in _NO_SDPA_MODELS:
        return "eager"
    return setup.attention


def layer_token_bytes(model: ModelSpec, setup: TrainSetup) -> float:
    """Bytes one decoder layer keeps for backward, per token, without checkpointing.

    Tensor by tensor from the autograd graph: RMSNorm saves its fp32 input (and, when its weight
    trains, the normalised tensor); a trainable linear saves its input in the compute dtype (one
    cast per linear under autocast with an fp32 stream, one shared tensor otherwise); a frozen one
    saves nothing; a LoRA adapter saves its dropout mask and the cast dropout output; flash/SDPA
    saves q, k, v, the output and an fp32 logsumexp per head; eager adds the fp32 softmax and the
    half-precision probabilities per key (the s^2 term); SwiGLU/GeGLU save gate, activation and up
    (and the product when down_proj trains). Liger's kernels (`liger_layers`) save less: see
    `_norm_saved`, and its gated MLP keeps gate and up only, recomputing the activation.
    """
    lay = layout(model, setup)
    c, s = lay.compute, lay.stream
    h, inter, a = model.hidden_size, model.intermediate_size, model.num_heads
    hq, hkv = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    full = setup.method == "full"
    # (Gemma's extra two norms read the attention and MLP outputs; the others, the residual stream)
    total = 2 * _norm_saved(model, setup)
    if model.model_type in FOUR_NORM_MODELS:
        total += 2 * _norm_saved(model, setup, reads_stream=False)
    if full and model.moe is not None:
        total += c * h * 3 if s != c else s * h            # q/k/v inputs (the MoE block's: moe_token_bytes)
    elif full:
        total += c * h * 5 if s != c else s * h * 2      # q/k/v and gate/up inputs
        total += c * inter                                # down_proj's input
    for lin in ([] if full else adapted_linears(model, setup)):
        saved = (lay.mask + c) if setup.lora_dropout > 0 else c
        total += saved * lin.d_in + c * setup.lora_r
    if attention_kernel(model, setup) == "eager":
        seq = setup.seq_len
        probs = 4 + (c if c != 4 else 0) + (c if model.model_type in _SOFTCAP_MODELS else 0)
        if model.model_type == "gpt_oss":  # modeling_gpt_oss: softmax in the logits' dtype over keys + a sink
            probs = 2 * c  # column; the sink-less view is copied contiguous for the value matmul, which saves it
        total += c * hq * 3 + a * seq * probs + (c * hq if full else 0)
    else:
        total += c * (2 * hq + 2 * hkv) + 4 * a
    if model.moe is not None:
        return total + moe_token_bytes(model, setup)
    total += (2 if liger_layers(model, setup) else 3) * c * inter  # gate out, (activation out,) up out
    return total


def activation_bytes(model: ModelSpec, setup: TrainSetup) -> float:
    """Saved activations at the end of the forward pass, one micro-batch, all layers."""
    lay = layout(model, setup)
    tokens = setup.micro_batch * setup.seq_len
    layers: float
    if setup.checkpointing:
        layers = model.num_layers * tokens * lay.stream * model.hidden_size  # each layer keeps its input
    else:
        layers = model.num_layers * (tokens * layer_token_bytes(model, setup) + weight_copy_bytes(model, setup))
        if setup.method != "full":
            # Behind a frozen embedding the first layer's input needs no gradient, so nothing is kept
            # for one: not its first norm's fp32 copy, nor the dropout masks of adapters reading it.
            # (TRL calls enable_input_require_grads() only with gradient checkpointing.)
            readers = sum(lin.d_in for lin in adapted_linears(model, setup)
                          if lin.name in ("q_proj", "k_proj", "v_proj"))
            layers -= tokens * (_norm_saved(model, setup) + (lay.mask * readers if setup.lora_dropout > 0 else 0))
    return layers + tokens * fixed_token_bytes(model, setup)


def adapter_forward_bytes(model: ModelSpec, setup: TrainSetup) -> float:
    """Transient bytes while the LoRA adapter with the widest input runs forward: its input itself
    (the gated product, which nothing saves when the base layer is frozen), the base layer's
    output, and PEFT's cast of the input to the adapter's dtype (fp32) with dropout's output
    that size; the fp32 copies go once the adapter's matmul has its (saved) half-precision input.
    Nothing when adapters are half, or gathered half (FSDP2's bf16 gathers)."""
    lay = layout(model, setup)
    if setup.method == "full" or lay.trainable == lay.compute or setup.strategy == "fsdp":
        return 0.0
    widest = max(adapted_linears(model, setup), key=lambda lin: lin.d_in, default=None)
    if widest is None:
        return 0.0
    copies = 2 if setup.lora_dropout > 0 else 1
    per_token = widest.d_in * (lay.trainable * copies + lay.compute) + widest.d_out * lay.compute
    return setup.micro_batch * setup.seq_len * per_token


def weight_copy_bytes(model: ModelSpec, setup: TrainSetup) -> float:
    """Half-precision copies autocast makes of one layer's fp32 weights; backward keeps them."""
    lay = layout(model, setup)
    return lay.compute * _linear_params(model) / model.num_layers if lay.autocast_copies else 0.0


def fixed_token_bytes(model: ModelSpec, setup: TrainSetup) -> float:
    """Per-token tensors outside the layers: final norm, the head's saved hidden states, RoPE tables, ids."""
    lay = layout(model, setup)
    h = model.hidden_size
    norm = _norm_saved(model, setup) - (0 if liger_layers(model, setup) else 8)
    moe_loss = moe_aux_loss_bytes(model, setup) / (setup.micro_batch * setup.seq_len)
    return norm + lay.stream * h + 2 * model.head_dim * lay.stream + 6 * 4 + 16 + moe_loss


def layer_backward_bytes(model: ModelSpec, setup: TrainSetup) -> float:
    """Transient buffers while one layer runs backward (gradients of its activations and weights)."""
    lay = layout(model, setup)
    tokens = setup.micro_batch * setup.seq_len
    inter = model.intermediate_size
    # Gradients of gate, up and the activation (measured: 6 x I bytes per token in bf16). Under
    # non-reentrant checkpointing the recomputed tensors stay until the whole layer is done, and
    # with LoRA the adapters' fp32 input gradients join them (measured: 12 x I), a peak reached in
    # down_proj's backward. Otherwise Liger's gated MLP writes the gate's and up's gradients into their
    # saved outputs: only the product's is new.
    mlp_grads = 6 if setup.checkpointing and setup.method != "full" else 1 if liger_layers(model, setup) else 3
    transient: float = (tokens * mlp_grads * lay.compute * inter if model.moe is None
                        else moe_backward_bytes(model, setup))  # a MoE block's routed rows instead
    if attention_kernel(model, setup) == "eager":  # gradients of the probabilities and the fp32 softmax
        transient += setup.micro_batch * model.num_heads * setup.seq_len**2 * (lay.compute + 2)
    widest = max(lin.d_in * lin.d_out for lin in model.linears)
    if setup.method == "full":
        transient += widest * lay.compute + (widest * lay.trainable if lay.compute != lay.trainable else 0)
    elif setup.method == "qlora":
        transient += widest * lay.compute  # bitsandbytes dequantizes the weight for grad_input
    if setup.checkpointing:  # the layer is recomputed first, under autocast
        transient += tokens * layer_token_bytes(model, setup) + weight_copy_bytes(model, setup)
    return transient


def logits_bytes(model: ModelSpec, setup: TrainSetup, phase: str = "backward") -> float:
    """TRL's fused LM head: tiles of [<=4096 tokens x <=32768 vocab] instead of full logits.

    On a GPU a Triton kernel folds each tile in place; elsewhere torch ops do, with several fp32
    temporaries of the tile's size. Backward rebuilds each tile and accumulates fp32 gradients for
    the hidden states (and for the LM head's weight when it trains).
    """
    lay = layout(model, setup)
    tokens = setup.micro_batch * setup.seq_len
    rows, cols = min(tokens, LM_HEAD_TILE[0]), min(model.vocab_size, LM_HEAD_TILE[1])
    h = model.hidden_size
    softcap = model.model_type in _SOFTCAP_MODELS
    tile = rows * LM_HEAD_TILE[1] * lay.compute  # the matmul buffer is chunk-wide even for a small vocabulary
    # hidden and weight chunks are cast to the compute dtype when stored wider (fp32 under autocast)
    head_weight = lay.compute if setup.method != "full" or setup.strategy == "fsdp" else lay.trainable
    chunks = (rows * h * lay.compute * (lay.stream != lay.compute)
              + cols * h * lay.compute * (head_weight != lay.compute))
    if phase == "forward":
        fold = 0 if setup.device == "cuda" else rows * cols * 4 * 3.25
        return tile + chunks + fold + 7 * 4 * tokens
    fold = 0.0
    if setup.device != "cuda":
        # torch fold of one tile (8.25 fp32 tiles alive with softcapping), or the fp32 upcasts
        # `_addmm_fp32` makes of the tile and the weight chunk outside CUDA
        fold = max(rows * cols * 4 * (8.25 if softcap else 7.25), rows * cols * 4 + cols * h * 4)
    grad_hidden = tokens * h * (4 + (lay.stream if lay.stream != 4 else 0))
    accumulator = cast = 0.0
    if setup.method == "full":  # fp32 accumulator, cast back (after the tiles) when the weight in use is half
        in_use = lay.compute if setup.strategy == "fsdp" else lay.trainable
        accumulator = model.vocab_size * h * 4
        cast = model.vocab_size * h * in_use if in_use != 4 else 0.0
    return tile + chunks + grad_hidden + accumulator + max(fold, cast)
