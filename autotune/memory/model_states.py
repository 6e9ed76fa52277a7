"""Model states on one device: weights, gradients and optimizer states, as the strategy shards
them and offload moves them to host RAM.

Sources: the ZeRO paper (Rajbhandari et al. 2020) and DeepSpeed's own estimators
(estimate_zero2/3_model_states_mem_needs); optimizer states from the optimizers' source (torch's
fused AdamW, bitsandbytes AdamW8bit, HF Adafactor). llmwizard.autotune.memory adds activations,
buffers and overhead to these for the step's peak.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmwizard.autotune.memory.activations import adapted_linears, layout
from llmwizard.autotune.model.model_types import ModelSpec
from llmwizard.autotune.memory.savers import (TORCHAO_OPTIMIZERS, adapter_factored_bytes, factored_moment_bytes,
                                       fused_in_backward, fused_optimizer_bytes, low_rank_optimizer_bytes,
                                       torchao_optimizer_bytes, widest_tensor)
from llmwizard.autotune.train_setup import TrainSetup


def optimizer_bytes(model: ModelSpec, setup: TrainSetup, trainable: int, state_bytes: int) -> tuple[float, float]:
    """(states, step temporaries) for `trainable` parameters whose states are `state_bytes` wide."""
    if setup.optimizer == "adamw":
        # exp_avg + exp_avg_sq in the parameter dtype. The exporter writes torch's fused AdamW
        # (savers.ADAMW_FUSED), which updates each element in place: no step temporary. (The
        # foreach AdamW, `adamw_torch`, would build one more state-sized tensor, the sqrt of
        # exp_avg_sq, for the whole group; bench/fused_adamw_cpu.py measures both.)
        return 2 * state_bytes * trainable, 0.0
    if setup.optimizer == "adamw_8bit":
        # bitsandbytes AdamW8bit: two uint8 states + an fp32 absmax per 256-element block; fused update.
        return (2 + 2 * 4 / 256) * trainable, 0.0
    if setup.optimizer in TORCHAO_OPTIMIZERS:
        return torchao_optimizer_bytes(model, setup, trainable)
    if setup.optimizer in ("galore_adamw", "apollo_adamw"):  # (savers.LOW_RANK_OPTIMIZERS)
        return low_rank_optimizer_bytes(model, setup, trainable, state_bytes)
    if setup.optimizer == "adafactor":
        # Factored second moment (row + column vectors), no first moment (HF Adafactor, beta1=None);
        # step() builds grad^2 and the reconstructed update, full size, one tensor at a time.
        if setup.method == "full":
            widest = widest_tensor(model)
            states = factored_moment_bytes(model)
        else:
            widest = max(setup.lora_r * max(lin.d_in, lin.d_out) for lin in adapted_linears(model, setup))
            states = adapter_factored_bytes(model, setup.lora_r, adapted_linears(model, setup))
        # Half-precision parameters (pure bf16): step() also upcasts the gradient and the
        # parameter to fp32 (`grad.float()`, `p.float()`): two more fp32 tensors (measured).
        return states, (2 if state_bytes == 4 else 4) * 4 * widest
    return 0.0, 0.0  # SGD without momentum (HF's default): foreach add_ in place


@dataclass(frozen=True)
class ModelStates:
    """Model states on one device, and what offload moves to host RAM (per process)."""

    weights: float
    grads: float
    optimizer: float                  # the optimizer's states
    optimizer_temp: float             # temporaries of its step
    host: float
    notes: list[str]


def model_states(model: ModelSpec, setup: TrainSetup, trainable: int) -> ModelStates:
    """Weights, gradients and optimizer states per device, sharded as the strategy shards them."""
    lay = layout(model, setup)
    adapters = 0.0 if setup.method == "full" else trainable * lay.trainable
    weights = model.total_params * lay.weight + adapters
    state_bytes = 4 if lay.master else lay.trainable
    opt_states, opt_temp = optimizer_bytes(model, setup, trainable, state_bytes)
    if fused_in_backward(setup.optimizer):  # one process, no sharding, no offload (Plan checks)
        opt_states, opt_temp, grads = fused_optimizer_bytes(model, setup, lay.trainable)
        return ModelStates(weights, grads, opt_states, opt_temp, 0.0, [
            "AdaLomo: each weight is updated inside backward, so gradients never pile up"])
    opt_states += trainable * lay.master
    if lay.master:  # DeepSpeed reduces half-precision grads, then steps on an fp32 copy of its partition
        opt_temp += trainable * 4
    shards = setup.grad_shards
    weights_dev = weights / setup.num_gpus if setup.strategy in ("fsdp", "zero3") else weights
    opt_dev = opt_states / shards
    if setup.offload == "none":
        return ModelStates(weights_dev, trainable * lay.trainable / shards, opt_dev, opt_temp / shards, 0.0, [])
    # ZeRO-Offload: fp32 masters, optimizer states and fp32 gradient partitions live in host RAM
    # and the optimizer steps there; offload_param moves the half-precision partitions too.
    # FSDP2's CPUOffloadPolicy (the exporter's answer to any offload) moves parameters,
    # gradients and optimizer states.
    # (DeepSpeedCPUAdam / a CPU step: no foreach temporary on the GPU; 16 bytes per trainable
    # parameter, 18 with offload_param: DeepSpeed's estimate_zero3_model_states_mem_needs.)
    host = opt_dev + trainable * 4 / shards
    if setup.strategy == "fsdp" or setup.offload == "params":
        host += weights_dev
        weights_dev = 0.0
    note = ("FSDP2 CPU offload: parameters, gradients and optimizer states in host RAM"
            if setup.strategy == "fsdp" else
            f"ZeRO-Offload: optimizer states{' and parameters' if setup.offload == 'params' else ''} "
            "in host RAM; the optimizer steps on the CPU")
    return ModelStates(weights_dev, 0.0, 0.0, 0.0, host, [note])
