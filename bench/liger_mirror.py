"""Liger's layer kernels as allocation mirrors, for bench/memory_validation.py's `--savers` cases.

Liger's kernels are Triton kernels: they run on NVIDIA GPUs only and cannot be traced under
FakeTensorMode. What the memory model needs from them is not their arithmetic but what they
allocate, save for backward and overwrite in place. Each autograd Function below makes exactly
the tensors the matching Liger Function makes (liger-kernel, src/liger_kernel/ops/):

- LigerRMSNormFunction (rms_norm.py): `ensure_contiguous` inputs; forward allocates Y (the input's
  dtype) and RSTD (fp32, one per row) and saves X, W and RSTD; backward allocates an fp32
  [sm_count x hidden] buffer for dW and writes dX into dY in place, except where the patch sets
  `in_place=False` (Gemma 2 and 3: `zeros_like(dY)`).
- LigerSiLUMulFunction (swiglu.py) and LigerGELUMulFunction (geglu.py): forward allocates the
  product c and saves the gate and up projections a and b; backward writes da and db into a and b
  in place and returns them.

The values are not computed (the bench runs on fake tensors, which have none). The patching
follows liger_kernel.transformers.monkey_patch for the instance, as transformers'
`apply_liger_kernel` calls it and TRL configures it (the fused linear cross-entropy off: TRL keeps
its own fused LM head): the final norm, each layer's norms and each layer's MLP forward.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch

# multi_processor_count of an H100 SXM: the rows of RMSNorm's partial dW buffer.
SM_COUNT = 132
# Norms per decoder layer that Liger patches (monkey_patch.apply_liger_kernel_to_*).
_LAYER_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                "post_feedforward_layernorm")


class RMSNormMirror(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, in_place: bool) -> torch.Tensor:
        flat = x.contiguous().view(-1, x.shape[-1])
        y = torch.empty_like(flat)
        rstd = torch.empty(flat.shape[0], dtype=torch.float32, device=x.device)
        ctx.in_place = in_place
        ctx.save_for_backward(flat, weight, rstd)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        flat, weight, _ = ctx.saved_tensors
        dy = dy.contiguous()
        dx = dy if ctx.in_place else torch.zeros_like(dy)
        partial = torch.empty((SM_COUNT, flat.shape[-1]), dtype=torch.float32, device=dy.device)
        dw = partial.sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
        return dx, dw, None


class GatedMulMirror(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.contiguous(), b.contiguous()
        ctx.save_for_backward(a, b)
        return torch.empty_like(a)

    @staticmethod
    def backward(ctx: Any, dc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = ctx.saved_tensors
        dc.contiguous()
        return a, b


def _norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return RMSNormMirror.apply(hidden_states, self.weight, self.mirror_in_place)


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(GatedMulMirror.apply(self.gate_proj(x), self.up_proj(x)))


def apply(model: Any) -> None:
    """Patch a causal LM (before PEFT wraps it) as Liger patches the instance."""
    base = getattr(model, model.base_model_prefix, model)
    in_place = model.config.model_type not in ("gemma2", "gemma3", "gemma3_text")  # in_place=False there

    def patch_norm(module: Any) -> None:
        module.mirror_in_place = in_place
        module.forward = MethodType(_norm_forward, module)

    patch_norm(base.norm)
    for layer in base.layers:
        layer.mlp.forward = MethodType(_mlp_forward, layer.mlp)
        for name in _LAYER_NORMS:
            if hasattr(layer, name):
                patch_norm(getattr(layer, name))
