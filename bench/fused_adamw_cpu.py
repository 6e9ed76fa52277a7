"""What torch's AdamW step allocates beyond its states, foreach against fused, on real CPU tensors.

Why: the exporter writes `optim: adamw_torch_fused` (torch's fused AdamW, transformers' default on
torch >= 2.8) and llmwizard.autotune.memory.model_states counts no step temporary for it, where the foreach
AdamW (`adamw_torch`) builds one more tensor the size of the states (the sqrt of exp_avg_sq). This
runs both on the same parameters, after a first step has made the states, and counts the bytes of
every storage the second step creates while it is alive (a dispatch mode with weak references, so
nothing is guessed from RSS noise). It also checks that the fused kernel runs on CPU tensors, fp32
and bf16, which is why the CPU plans export it too.

    python bench/fused_adamw_cpu.py [--out bench/results/fused_adamw_cpu.txt]
"""

from __future__ import annotations

import argparse
import time
import weakref
from pathlib import Path
from typing import Any

SHAPES = [(2048, 8192)] * 4            # four decoder-sized weights, 64 Mi elements
MODELLED = {"foreach": 1.0, "fused": 0.0}  # model_states: step temporaries in units of the states' size


def step_peak(implementation: str, dtype: Any) -> float:
    """Bytes the second step() holds at once beyond the existing tensors, over the bytes of one state set."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveStorages(TorchDispatchMode):
        """Counts the storages the ops create and drops them when they are freed."""

        def __init__(self) -> None:
            super().__init__()
            self.live = 0
            self.peak = 0
            self.seen: set[int] = set()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            for tensor in tree_flatten(out)[0]:
                if not isinstance(tensor, torch.Tensor):
                    continue
                storage = tensor.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size == 0 or key in self.seen:
                    continue
                self.seen.add(key)
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._freed, key, size)
            return out

        def _freed(self, key: int, size: int) -> None:
            self.live -= size
            self.seen.discard(key)

    params = [torch.nn.Parameter(torch.randn(shape, dtype=dtype)) for shape in SHAPES]
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer = torch.optim.AdamW(params, lr=1e-4, **{implementation: True})
    optimizer.step()  # the states exist from here on
    mode = LiveStorages()
    with mode:
        optimizer.step()
    state_bytes = sum(p.numel() for p in params) * params[0].element_size()
    return mode.peak / state_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the table here too")
    args = parser.parse_args(argv)
    import torch

    lines = [f"# torch AdamW step temporaries on CPU tensors, in units of one state set ({time.strftime('%Y-%m-%d')})",
             f"# torch {torch.__version__}; {len(SHAPES)} weights of {SHAPES[0][0]}x{SHAPES[0][1]}; second step",
             f"{'implementation':<16}{'dtype':<10}{'measured':>10}{'modelled':>10}"]
    worst = 0.0
    for implementation, modelled in MODELLED.items():
        for dtype in (torch.float32, torch.bfloat16):
            measured = step_peak(implementation, dtype)
            worst = max(worst, abs(measured - modelled))
            lines.append(f"{implementation:<16}{str(dtype).removeprefix('torch.'):<10}{measured:>10.3f}"
                         f"{modelled:>10.3f}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0 if worst < 0.01 else 1


if __name__ == "__main__":
    raise SystemExit(main())
