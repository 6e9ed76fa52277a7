"""Memory savers beyond sharding and offload: pure bf16 and torchao's low-bit AdamW.

Kept apart from the base memory model (llmwizard.autotune.memory.activations, .model_states) so each
saver's terms sit in one place with their sources:

- pure bf16 (`precision: pure_bf16`): the weights are loaded in bf16 and train in bf16, with no
  fp32 master copy and no autocast. torch's AdamW keeps its states in the parameter's dtype
  (torch/optim/adamw.py: `torch.zeros_like(p)`), so weights, gradients and both moments are 2
  bytes each: 8 bytes per trainable parameter instead of 16. The trade-off: an update smaller
  than half a bf16 unit in the last place of its weight (about 1/256 of the weight) is rounded
  away. torchao's low-bit AdamW compensates with stochastic rounding (`bf16_stochastic_round`,
  passed through the Trainer's `optim_args`); torch AdamW, Adafactor and SGD do not. Kahan
  summation (`adamw_anyprecision`) needs torchdistx, which has no build for this torch.
- torchao's AdamW8bit / AdamW4bit (transformers' `adamw_torch_8bit` / `adamw_torch_4bit`,
  torchao.optim): both moments quantized blockwise, one fp32 scale per block of 256 elements
  (the Trainer's default `block_size`); the step dequantizes one parameter at a time, in fp32.
  Its temporaries (bench/torchao_states.py, measured with inductor's CPU backend): the two new
  moments in fp32, 8 bytes per element of the widest parameter for 8 bits; 4 bits adds each
  moment's codes before they are packed two to a byte (int64 indices and uint8 codes), 26 bytes.
- AdaLomo (transformers' `adalomo`, the lomo-optim package; Lv et al. 2023, arXiv:2310.10195):
  the update is fused into backward. A hook on every parameter updates the weight whose gradient
  has just been finished and drops that gradient (lomo_optim/adalomo.py `fuse_update`), so no
  full set of gradients ever exists: the gradient being applied (dropped once copied to fp32)
  and the one that fired the hook. Its states are Adafactor's factored second moment (fp32 row and
  column vectors, for every parameter) and no momentum; the update builds three fp32 tensors of
  the parameter's size (the gradient, the reconstructed second moment, the fp32 weight). What
  it costs: gradients cannot be accumulated (each backward updates the weights), so the
  effective batch is what one micro-batch holds; one process only (with DDP the hook would
  apply a gradient before it is all-reduced); the lomo-optim package allocates its states with
  `.cuda()`, so NVIDIA GPUs only. The learning rate is relative to each weight's RMS (like
  Adafactor's relative step): the AdaLomo paper's instruction tuning uses 5e-4 with a linear
  schedule and 3% warmup (OpenLMLab/LOMO adalomo/instruction-tuning/train.py). Its update is
  rounded to nearest when copied into a bf16 weight, so under pure bf16 small updates are lost.
- APOLLO's AdamW (transformers' `apollo_adamw`, the apollo-torch package; Zhu et al. 2024,
  arXiv:2412.05270), asked for only: GaLore's layout with a random projection instead of an SVD;
  the low-rank moments only set a per-channel scale for the full gradient, so the update is
  full-rank. Same memory terms less the SVD, same limits.
- GaLore's AdamW (transformers' `galore_adamw`, the galore-torch package; Zhao et al. 2024,
  arXiv:2403.03507), asked for only: the gradient of each decoder linear layer (m x n) is
  projected onto its top `rank` singular directions, so its two moments are max(m, n) x rank
  instead of m x n, plus the projection (rank x min(m, n)); the embedding, the head and the
  norms keep AdamW's states (galore_torch/adamw.py). Every `update_proj_gap` steps the projection
  is refreshed by an SVD of the full gradient in fp32 (the gradient's copy, U and V), and each
  step projects the update back to m x n. What it costs: the update is low-rank between
  refreshes; one process or DDP only (the projection works on whole weights, which FSDP and
  ZeRO shard); full fine-tuning only (LoRA's adapters are low-rank already). Weights and
  gradients are as AdamW's, so it saves the states only.
"""

from __future__ import annotations

from llmwizard.autotune.goals import Goals
from llmwizard.autotune.model.model_types import Linear, ModelSpec
from llmwizard.autotune.schema import Optimizer, Precision
from llmwizard.autotune.train_setup import TrainSetup

# transformers' OptimizerNames for each torchao optimizer, and the bits of one moment element.
TORCHAO_OPTIMIZERS = {"torchao_adamw_8bit": ("adamw_torch_8bit", 8), "torchao_adamw_4bit": ("adamw_torch_4bit", 4)}
TORCHAO_BLOCK = 256       # transformers passes block_size=256 unless optim_args say otherwise
# AdamW as exported: torch's fused kernel (transformers' `adamw_torch_fused`, TrainingArguments'
# own default on torch >= 2.8). It runs on CUDA and, since torch 2.4, on CPU tensors (torch 2.13 here,
# fp32 and bf16), and DTensor shards it (FSDP2), so every plan's AdamW is the fused one. It updates each
# element in place; the foreach AdamW (`adamw_torch`) builds one more tensor the size of the states
# for the step (bench/fused_adamw_cpu.py measures 1.00x the states for foreach, 0 for fused).
ADAMW_FUSED = "adamw_torch_fused"
ADAMW_FUSED_WHY = ("torch's fused AdamW (adamw_torch_fused, transformers' default on torch >= 2.8): one kernel "
                   "updates each element in place, so the step adds no state-sized temporary (the foreach "
                   "adamw_torch would add one more copy of the states' size) and runs faster on GPUs")
ADAMW_DEEPSPEED_CPU_WHY = ("DeepSpeed's CPU Adam (DeepSpeedCPUAdam): the optimizer states are offloaded, so the "
                           "step runs on the CPU, on the fp32 partitions in host RAM")


def adamw_implementation(strategy: str, offload: str) -> str:
    """Which AdamW runs and why, in words for the plan's optimizer reason: DeepSpeed's own CPU Adam
    when ZeRO offloads the optimizer (runner.export.configs names it in ds_config.json), torch's fused
    AdamW otherwise (on FSDP2's CPU offload too: the fused kernel runs on CPU tensors)."""
    if strategy.startswith("zero") and offload != "none":
        return ADAMW_DEEPSPEED_CPU_WHY
    return ADAMW_FUSED_WHY


def with_adamw_implementation(reason: str | None, strategy: str, offload: str) -> str:
    """The optimizer reason of an AdamW plan, ending with the AdamW that runs in this layout: what
    an earlier layout said is replaced (a probe that moves the states to host RAM changes it)."""
    said = reason or "AdamW (the planner's default)"
    for why in (ADAMW_FUSED_WHY, ADAMW_DEEPSPEED_CPU_WHY):
        said = said.replace(f"; {why}", "")
    return f"{said}; {adamw_implementation(strategy, offload)}"


# What each optimizer does about bf16 updates smaller than a weight's last bit, under pure bf16.
COMPENSATION: dict[str, str] = {
    "torchao_adamw_8bit": "torchao's 8-bit AdamW rounds each bf16 update stochastically, so small updates "
                          "survive on average",
    "torchao_adamw_4bit": "torchao's 4-bit AdamW rounds each bf16 update stochastically, so small updates "
                          "survive on average",
}
ROUND_TO_NEAREST = {
    "adalomo": "AdaLomo rounds each update to the nearest bf16 value: updates smaller than about 1/256 of a "
               "weight are lost (torchao_adamw_8bit rounds stochastically, where its states fit)",
}
NO_COMPENSATION = ("no compensation: updates smaller than about 1/256 of a weight are rounded away "
                   "(torchao_adamw_8bit or torchao_adamw_4bit round stochastically instead)")


# Why a pure bf16 tier is taken: it comes before offload in the search (llmwizard.autotune.plan.search).
NO_FP32_FIT = ("nothing fits on the GPUs with fp32 master weights short of offloading to host RAM, which "
               "crosses PCIe every step (--precision bf16 --optimizer adamw asks for that instead)")


# Optimizers whose update runs inside backward (no accumulation, one process, a GPU).
FUSED_OPTIMIZERS = ("adalomo",)
ADALOMO_LEARNING_RATE = 5e-4   # the AdaLomo paper's instruction-tuning rate (relative to weight RMS)
ADALOMO_NEEDS = ("AdaLomo updates each weight inside backward: it needs an NVIDIA GPU (lomo-optim allocates "
                 "its states on CUDA), one process (DDP would apply gradients before they are all-reduced) and "
                 "no gradient accumulation")


# GaLore and APOLLO, as exported (transformers' defaults, written out so the files say what runs):
# the decoder's attention and MLP linears (a module whose name holds one of these), their rank and
# how often the projection is refreshed.
GALORE_TARGETS = ["self_attn", "mlp"]
GALORE_RANK = 128
LOW_RANK_ARGS = {
    "galore_adamw": f"rank={GALORE_RANK},update_proj_gap=200,scale=0.25,proj_type=std",
    "apollo_adamw": f"rank={GALORE_RANK},proj=random,scale_type=channel,update_proj_gap=200,scale=1.0,proj_type=std",
}
LOW_RANK_OPTIMIZERS = tuple(LOW_RANK_ARGS)
LOW_RANK_WHY = {
    "galore_adamw": (f"GaLore keeps rank-{GALORE_RANK} moments for the attention and MLP linears (an SVD of the "
                     "gradient refreshes the projection every 200 steps) and AdamW's for the rest; between refreshes "
                     "each linear's update is low-rank"),
    "apollo_adamw": (f"APOLLO keeps rank-{GALORE_RANK} moments of a random projection for the attention and MLP "
                     "linears and AdamW's for the rest; each linear's full gradient is scaled per channel by the "
                     "ratio the low-rank moments give, so its update stays full-rank"),
}
LOW_RANK_NEEDS = ("it projects the gradients of whole weights: it needs full fine-tuning and one process or DDP "
                  "(FSDP and ZeRO shard the weights)")


def low_rank_optimizer_bytes(model: ModelSpec, setup: TrainSetup, trainable: int, state_bytes: int
                             ) -> tuple[float, float]:
    """(states, step temporaries) of GaLore's or APOLLO's AdamW: low-rank moments and a projection
    for each decoder linear, AdamW's moments for the rest. The step's widest temporary: GaLore's
    SVD of the widest linear's gradient (its fp32 copy, U and V), the update in full size (GaLore
    projects it back, APOLLO scales the raw gradient), or AdamW's denominator and update of the
    widest other tensor (the embedding; both packages' adamw.py build both)."""
    projected = 0.0
    linear_params = 0
    for lin in model.linears:
        rank = min(GALORE_RANK, lin.d_in, lin.d_out)
        projected += 2 * rank * max(lin.d_in, lin.d_out) + rank * min(lin.d_in, lin.d_out)
        linear_params += lin.d_in * lin.d_out
    states = state_bytes * (model.num_layers * projected + 2 * max(0, trainable - model.num_layers * linear_params))
    svd = max(4 * (lin.d_in * lin.d_out + min(lin.d_in, lin.d_out) * (lin.d_in + lin.d_out))
              for lin in model.linears) if setup.optimizer == "galore_adamw" else 0
    back = max(state_bytes * lin.d_in * lin.d_out for lin in model.linears)
    other = 2 * state_bytes * max(model.embedding_params, model.lm_head_params)
    return states, max(svd, back, other)


def fused_in_backward(optimizer: str) -> bool:
    return optimizer in FUSED_OPTIMIZERS


def factored_moment_bytes(model: ModelSpec) -> float:
    """A factored second moment (Adafactor, AdaLomo) for every weight of the model: fp32 row and
    column vectors of each decoder linear, the embedding and the head (norms left out: small)."""
    return 4 * (model.num_layers * sum(lin.d_in + lin.d_out for lin in model.linears)
                + 2 * (model.vocab_size + model.hidden_size))


def adapter_factored_bytes(model: ModelSpec, r: int, linears: list[Linear]) -> float:
    """The same for the rank-`r` LoRA adapters of `linears` (A: r x d_in, B: d_out x r) in every layer."""
    return 4 * model.num_layers * sum(2 * r + lin.d_in + lin.d_out for lin in linears)


def fused_optimizer_bytes(model: ModelSpec, setup: TrainSetup, grad_bytes: float) -> tuple[float, float, float]:
    """(states, update temporaries, gradients) of AdaLomo: the factored fp32 second moment of every
    parameter, three fp32 tensors of the widest trainable parameter during its update, and one
    gradient of that size (the hook applies a gradient and drops it once the next one arrives)."""
    # (lomo-optim keeps the moment of every parameter, frozen ones too)
    states = factored_moment_bytes(model)
    if setup.method != "full":
        states += adapter_factored_bytes(model, setup.lora_r, model.linears)
    widest = widest_tensor(model) if setup.method == "full" else widest_update(model, setup)
    return states, fused_update_temp(widest), grad_bytes * widest


def widest_update(model: ModelSpec, setup: TrainSetup) -> int:
    """The widest trainable tensor of a decoder layer (a linear, or a LoRA adapter's matrix)."""
    if setup.method == "full":
        return max(lin.d_in * lin.d_out for lin in model.linears)
    return max(setup.lora_r * max(lin.d_in, lin.d_out) for lin in model.linears)


def fused_update_temp(params: int) -> float:
    """AdaLomo's update of one `params`-element weight: the gradient, the reconstructed second
    moment and the weight, each in fp32."""
    return 3 * 4 * params


def pure_bf16(setup: TrainSetup) -> bool:
    """Full fine-tuning in bf16 storage: no fp32 master, no autocast. (With LoRA the frozen base
    is bf16 under mixed bf16 already; PEFT keeps its adapters fp32, so the layout is bf16's.)"""
    return setup.precision == "pure_bf16" and setup.method == "full"


def compensation(optimizer: str) -> str:
    """What the optimizer does about lost small updates under pure bf16, in words."""
    return COMPENSATION.get(optimizer) or ROUND_TO_NEAREST.get(optimizer, NO_COMPENSATION)


def widest_tensor(model: ModelSpec) -> int:
    return max(model.embedding_params, model.lm_head_params, max(lin.d_in * lin.d_out for lin in model.linears))


def torchao_optimizer_bytes(model: ModelSpec, setup: TrainSetup, trainable: int) -> tuple[float, float]:
    """(states, step temporaries) of torchao's AdamW8bit/4bit for `trainable` parameters: two
    quantized moments with an fp32 scale per block. The step (torch.compile'd, one parameter at a
    time) materialises the new moments in fp32 before their blockwise scales are taken, and the
    4-bit step each moment's int64 and uint8 codes before packing them (module docstring)."""
    _, bits = TORCHAO_OPTIMIZERS[setup.optimizer]
    per_element = bits / 8 + 4 / TORCHAO_BLOCK
    widest = widest_tensor(model) if setup.method == "full" else max(
        setup.lora_r * max(lin.d_in, lin.d_out) for lin in model.linears)
    temporaries = 2 * 4 + (2 * (8 + 1) if bits == 4 else 0)
    return 2 * per_element * trainable, temporaries * widest


def saver_tiers(device: str, base: TrainSetup, goals: Goals) -> list[tuple[Optimizer, Precision | None, str]]:
    """The search's tiers for these savers, leanest last: (optimizer, precision or None for the
    base's, why the plan needs it). Full fine-tuning on GPUs with bf16, and only the knobs the
    user left to the planner; each tier is tried only when the ones before fit nothing."""
    if device != "cuda" or base.method != "full":
        return []
    tiers: list[tuple[Optimizer, Precision | None, str]] = []
    if not goals.optimizer:
        tiers.append(("adafactor", None, "Adafactor: AdamW's fp32 states do not fit even in 8 bits; Adafactor "
                      "keeps a factored second moment and no momentum (about 8 bytes per parameter with the "
                      "fp32 weights and gradients, against AdamW's 16)"))
    if goals.precision or base.precision != "bf16":
        return tiers
    pure = "pure bf16 (bf16 weights, gradients and optimizer states, no fp32 master copy)"
    if goals.optimizer:
        # Only with an optimizer that compensates for the lost small updates: one asked for by
        # name that does not is not swapped for lossy training behind the user's back.
        if goals.optimizer not in COMPENSATION:
            return tiers
        return tiers + [(goals.optimizer, "pure_bf16", f"{pure}: {NO_FP32_FIT}")]
    return tiers + [
        ("torchao_adamw_8bit", "pure_bf16", f"{pure} with torchao's 8-bit AdamW: 6 bytes per parameter; "
                                            f"{NO_FP32_FIT}"),
        ("torchao_adamw_4bit", "pure_bf16", f"{pure} with torchao's 4-bit AdamW: 5 bytes per parameter; 8-bit "
                                            "states do not fit"),
        ("adafactor", "pure_bf16", f"{pure} with Adafactor: about 4 bytes per parameter; AdamW's states do not "
                                   "fit even in 4 bits"),
    ]


def fused_tier(device: str, base: TrainSetup, goals: Goals) -> tuple[Optimizer, Precision, str] | None:
    """The last saver tier, after activation offloading and before offload to host RAM: AdaLomo,
    its update fused into backward (in pure bf16 unless a precision was asked for). Full
    fine-tuning on one GPU, with the optimizer and the effective batch left to the planner, since
    it gives up gradient accumulation."""
    if (device != "cuda" or base.method != "full" or base.num_gpus != 1 or goals.optimizer
            or goals.effective_batch):
        return None
    precision: Precision = "pure_bf16" if not goals.precision and base.precision == "bf16" else base.precision
    weights = "bf16 weights (pure bf16), " if precision == "pure_bf16" else ""
    return ("adalomo", precision,
            f"AdaLomo, its update fused into backward: {weights}no full set of gradients (each weight is updated "
            "as soon as its gradient is finished) and a factored second moment; nothing else fits on this GPU "
            "short of offloading to host RAM, which crosses PCIe every step (--offload params asks for that, "
            "keeping AdamW and the effective batch); needs an NVIDIA GPU and the lomo-optim package")


def leanest(device: str, base: TrainSetup, goals: Goals) -> dict[str, object]:
    """The leanest saver tier's changes to the setup ({} when none applies), for "does not fit":
    the leanest optimizer and precision, and on GPUs activation offloading."""
    lean: dict[str, object] = {}
    if device == "cuda" and goals.activation_offloading is None:
        lean["offload_activations"] = True
    fused = fused_tier(device, base, goals)
    tiers = saver_tiers(device, base, goals)
    if fused:
        lean.update({"optimizer": fused[0], "precision": fused[1]})
    elif tiers:
        optimizer, precision, _ = tiers[-1]
        lean.update({"optimizer": optimizer, **({"precision": precision} if precision else {})})
    return lean
