"""Memory savers beyond sharding and offload: pure bf16 and torchao's low-bit AdamW.

Kept apart from the base memory model (llmwizard.autotune.activations, .model_states) so each
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
"""

from __future__ import annotations

from llmwizard.autotune.goals import Goals
from llmwizard.autotune.model_types import ModelSpec
from llmwizard.autotune.schema import Optimizer, Precision
from llmwizard.autotune.train_setup import TrainSetup

# transformers' OptimizerNames for each torchao optimizer, and the bits of one moment element.
TORCHAO_OPTIMIZERS = {"torchao_adamw_8bit": ("adamw_torch_8bit", 8), "torchao_adamw_4bit": ("adamw_torch_4bit", 4)}
TORCHAO_BLOCK = 256       # transformers passes block_size=256 unless optim_args say otherwise
# What each optimizer does about bf16 updates smaller than a weight's last bit, under pure bf16.
COMPENSATION = {
    "torchao_adamw_8bit": "torchao's 8-bit AdamW rounds each bf16 update stochastically, so small updates "
                          "survive on average",
    "torchao_adamw_4bit": "torchao's 4-bit AdamW rounds each bf16 update stochastically, so small updates "
                          "survive on average",
}
NO_COMPENSATION = ("no compensation: updates smaller than about 1/256 of a weight are rounded away "
                   "(torchao_adamw_8bit or torchao_adamw_4bit round stochastically instead)")


# Why a pure bf16 tier is taken: it comes before offload in the search (llmwizard.autotune.search).
NO_FP32_FIT = ("nothing fits on the GPUs with fp32 master weights short of offloading to host RAM, which "
               "crosses PCIe every step (--precision bf16 --optimizer adamw asks for that instead)")


def pure_bf16(setup: TrainSetup) -> bool:
    """Full fine-tuning in bf16 storage: no fp32 master, no autocast. (With LoRA the frozen base
    is bf16 under mixed bf16 already; PEFT keeps its adapters fp32, so the layout is bf16's.)"""
    return setup.precision == "pure_bf16" and setup.method == "full"


def compensation(optimizer: str) -> str:
    """What the optimizer does about lost small updates under pure bf16, in words."""
    return COMPENSATION.get(optimizer, NO_COMPENSATION)


def widest_tensor(model: ModelSpec) -> int:
    return max(model.embedding_params, model.lm_head_params, max(lin.d_in * lin.d_out for lin in model.linears))


def torchao_optimizer_bytes(model: ModelSpec, setup: TrainSetup, trainable: int) -> tuple[float, float]:
    """(states, step temporaries) of torchao's AdamW8bit/4bit for `trainable` parameters: two
    quantized moments with an fp32 scale per block. The step (torch.compile'd, one parameter at a
    time) fuses the update, but the new moments are materialised in fp32 before their blockwise
    scales are taken: two fp32 tensors of the widest parameter."""
    _, bits = TORCHAO_OPTIMIZERS[setup.optimizer]
    per_element = bits / 8 + 4 / TORCHAO_BLOCK
    widest = widest_tensor(model) if setup.method == "full" else max(
        setup.lora_r * max(lin.d_in, lin.d_out) for lin in model.linears)
    return 2 * per_element * trainable, 2 * 4 * widest


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


def leanest(device: str, base: TrainSetup, goals: Goals) -> dict[str, object]:
    """The leanest saver tier's changes to the setup ({} when none applies), for "does not fit":
    the leanest optimizer and precision, and on GPUs activation offloading."""
    lean: dict[str, object] = {}
    if device == "cuda" and goals.activation_offloading is None:
        lean["offload_activations"] = True
    tiers = saver_tiers(device, base, goals)
    if tiers:
        optimizer, precision, _ = tiers[-1]
        lean.update({"optimizer": optimizer, **({"precision": precision} if precision else {})})
    return lean
