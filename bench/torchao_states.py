"""torchao's low-bit AdamW: the optimizer states and the step's temporaries, measured against
llmwizard.autotune.memory.savers.torchao_optimizer_bytes, side by side.

    python bench/torchao_states.py [--out bench/results/torchao_states-cpu.txt]

The step is torch.compile'd (fullgraph), which FakeTensorMode and MemTracker cannot follow, so
this measures real tensors on this machine: the states' bytes (the tensor subclass's inner
tensors, after a step), and the step's extra peak as the process's peak resident set above its
size before the step (/proc/self/status VmHWM, reset through /proc/self/clear_refs). One bf16
parameter per row, as the transformers Trainer builds the optimizer for `adamw_torch_8bit` /
`adamw_torch_4bit` (block 256), with TRL's stochastic rounding for pure bf16.

The step compiles with inductor's CPU backend here; on a GPU it compiles to Triton, whose
fusion may keep fewer temporaries. The figures are for the CPU.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from llmwizard.autotune.memory import TrainSetup
from llmwizard.autotune.model.model_types import Linear
from llmwizard.autotune.memory.savers import torchao_optimizer_bytes

SHAPES = [(4096, 4096), (14336, 4096), (32768, 4096)]


def _bytes(t: torch.Tensor) -> int:
    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        return sum(_bytes(getattr(t, name)) for name in names)
    return t.untyped_storage().nbytes()


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(optimizer: str, shape: tuple[int, int]) -> tuple[int, int]:
    """(state bytes, step peak bytes above the resident size before it) for one parameter."""
    from torchao.optim import AdamW4bit, AdamW8bit

    cls = AdamW8bit if optimizer == "torchao_adamw_8bit" else AdamW4bit
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(*shape, dtype=torch.bfloat16))
    opt = cls([param], lr=1e-4, block_size=256, bf16_stochastic_round=True)
    param.grad = torch.randn_like(param)
    opt.step()
    opt.step()  # compiled, states allocated
    states = sum(_bytes(v) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set to the current one
    before = _status("VmRSS:")
    opt.step()
    peak = _status("VmHWM:") - before
    return states, peak


class _OneTensor:
    """The one-parameter model the estimate's function is asked about."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.embedding_params = shape[0] * shape[1]
        self.lm_head_params = 0
        self.linears = [Linear("w", shape[1], shape[0])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = [f"# torchao {__import__('torchao').__version__}, torch {torch.__version__}, inductor CPU backend; "
             "bytes per parameter element",
             f"{'optimizer':<20} {'shape':>14} {'states':>8} {'estimate':>9} {'step peak':>10} {'estimate':>9}"]
    print("\n".join(lines), flush=True)
    for optimizer in ("torchao_adamw_8bit", "torchao_adamw_4bit"):
        for shape in SHAPES:
            n = shape[0] * shape[1]
            states, peak = measure(optimizer, shape)
            setup = TrainSetup(method="full", optimizer=optimizer, precision="pure_bf16")  # type: ignore[arg-type]
            est_states, est_temp = torchao_optimizer_bytes(_OneTensor(shape), setup, n)  # type: ignore[arg-type]
            line = (f"{optimizer:<20} {f'{shape[0]}x{shape[1]}':>14} {states / n:>8.3f} {est_states / n:>9.3f} "
                    f"{peak / n:>10.2f} {est_temp / n:>9.2f}")
            lines.append(line)
            print(line, flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
