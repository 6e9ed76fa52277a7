"""From the tensor peak to what `nvidia-smi` shows: the allocator's reserve and what lives outside it.

llmwizard.autotune.memory computes the tensor peak of a step (what `torch.cuda.max_memory_allocated`
would report). A process on a GPU holds more: the caching allocator keeps segments larger than
the tensors in them, the CUDA context and NCCL's buffers are allocated outside the allocator, and
cuBLAS keeps a workspace per handle and stream. The fit decisions use the sum, the figure
`nvidia-smi` reports for the process. On the CPU the same role is played by the process's
resident size (RSS). Every factor names its source; docs/memory.md explains them.

Pure and torch-free: the figures come from the setup, never from a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmwizard.autotune.machine.hardware_types import GiB

MiB = 2**20

# --- the caching allocator (c10/cuda/CUDACachingAllocator.cpp; PyTorch docs, "CUDA semantics",
# "Optimizing memory usage with PYTORCH_CUDA_ALLOC_CONF")
# Large allocations are rounded up to 2 MiB (kRoundLarge) and carved from segments of at least
# 20 MiB (kLargeBuffer); small ones (<= 1 MiB, kSmallSize) share 2 MiB segments (kSmallBuffer).
ROUND_LARGE = 2 * MiB
LARGE_SEGMENT = 20 * MiB
# Reserved beyond the tensors, as a share of the tensor peak. With expandable_segments (what the
# exporter writes into PYTORCH_CUDA_ALLOC_CONF) one segment per stream grows and shrinks in 20 MiB
# pages instead of holding cudaMalloc'd blocks of fixed sizes, so freed blocks are not stranded;
# what is left is rounding and blocks freed on one stream that another cannot reuse yet. Published
# reserved-vs-allocated measurements of HF/PEFT training sit 5-25% above the tensors, about 10%
# on average; without expandable segments long runs with varying sequence lengths reach the top
# of that range.
ALLOCATOR_RESERVE = {"expandable_segments": 0.10, "default": 0.25}
# Host memory on the CPU: glibc malloc's arenas and freed-but-kept chunks, taken to be of the
# same order as the GPU allocator's reserve (an assumption; for the embedded model the probe
# measured RSS at 0.71x the whole expected peak, bench/results/probe_overhead-cpu.txt, which the
# calibration store then corrects on that machine).
CPU_ALLOCATOR_RESERVE = 0.10

# --- outside the allocator
# The CUDA context: driver state, kernel images of torch and its libraries. With lazy module
# loading (CUDA_MODULE_LOADING=LAZY, torch's default since CUDA 11.7) 0.3-0.6 GB on recent GPUs;
# it is in `nvidia-smi` but never in torch.cuda.memory_reserved().
CUDA_CONTEXT = int(0.5 * GiB)
# cuBLAS/cuBLASLt workspaces: one per (handle, stream) that ran a GEMM, kept until exit (PyTorch
# docs, "cuBLAS workspaces"; aten/src/ATen/cuda/CublasHandlePool.cpp: CUBLAS_WORKSPACE_CONFIG
# defaults to 32 MiB on Hopper and newer, ":4096:2:16:8" (about 8 MiB) before). Training runs
# GEMMs on the compute stream in forward and backward: two workspaces at the Hopper size.
# cuDNN: a decoder-only LM runs no convolutions; the cuDNN attention backend's workspace comes
# from the caching allocator per call, so it is inside the allocator reserve above.
LIBRARY_WORKSPACES = 2 * 32 * MiB
# NCCL: per communicator, buffers of NCCL_BUFFSIZE (4 MiB by default, NCCL docs "Environment
# Variables") per channel and peer and protocol, plus its proxy and NVLS/CollNet state; allocated
# with cudaMalloc outside torch's allocator. 0.5-1.6 GB measured per communicator; one
# communicator (the data-parallel group) for the strategies we export.
NCCL_COMMUNICATOR = int(0.6 * GiB)
# The CPU's counterpart of the CUDA context: the resident size of one process with torch,
# transformers and the trainer imported and nothing trained yet.
CPU_PROCESS = int(0.6 * GiB)


@dataclass(frozen=True)
class Reserve:
    """The expected peak of one process as the system sees it (`nvidia-smi`, or RSS on the CPU),
    by part: `tensor_peak` plus each named part in `parts`."""

    tensor_peak: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.tensor_peak + sum(self.parts.values())


def expected_peak(tensor_peak: float, device: str, data_parallel: int = 1,
                  expandable_segments: bool = True) -> Reserve:
    """What one process is expected to hold at its peak, from the step's tensor peak."""
    tensor_peak = int(tensor_peak)
    if device != "cuda":
        return Reserve(tensor_peak, {"allocator reserve": _rounded_cpu(tensor_peak), "process": CPU_PROCESS})
    share = ALLOCATOR_RESERVE["expandable_segments" if expandable_segments else "default"]
    parts = {
        "allocator reserve": _rounded_gpu(tensor_peak * share),
        "CUDA context": CUDA_CONTEXT,
        "cuBLAS workspaces": LIBRARY_WORKSPACES,
    }
    if data_parallel > 1:
        parts["NCCL buffers"] = NCCL_COMMUNICATOR
    return Reserve(tensor_peak, parts)


def _rounded_gpu(reserve: float) -> int:
    """The reserve in whole 2 MiB pages, and at least one 20 MiB segment (a process that allocates
    anything holds one)."""
    pages = -(-int(reserve) // ROUND_LARGE)
    return max(pages * ROUND_LARGE, LARGE_SEGMENT)


def _rounded_cpu(tensor_peak: int) -> int:
    return int(tensor_peak * CPU_ALLOCATOR_RESERVE)


def headroom_words(reserved: int, budget: int, headroom_share: float) -> str:
    """How much of the budget the expected peak leaves free, and why that much is kept."""
    left = budget - reserved
    return (f"{max(left, 0) / GiB:.2f} GiB ({max(left, 0) / budget:.0%}) of {budget / GiB:.2f} GiB left; "
            f"the planner keeps at least {headroom_share:.0%} free for evaluation batches, checkpoint "
            "saving and the allocator's spikes that a training step's peak does not show")
