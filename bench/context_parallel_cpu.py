"""Does torch's context parallelism run on the CPU (gloo)? Two ranks, causal SDPA, ring attention.

    torchrun --nproc_per_node 2 bench/context_parallel_cpu.py

Result (bench/results/context_parallel_cpu.txt): no. torch registers sharding strategies only for
the CUDA SDPA kernels, so the planner offers context parallelism on GPUs only.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.experimental import context_parallel

dist.init_process_group("gloo")
rank = dist.get_rank()
mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("cp",))
torch.manual_seed(0)
qc, kc, vc = (torch.randn(1, 2, 64, 16) for _ in range(3))
try:
    with context_parallel(mesh, buffers=[qc, kc, vc], buffer_seq_dims=[2, 2, 2]):
        for t in (qc, kc, vc):
            t.requires_grad_()
        out = F.scaled_dot_product_attention(qc, kc, vc, is_causal=True)
        out.sum().backward()
    print(rank, "CP ran; shard", tuple(out.shape), flush=True)
except Exception as e:
    print(rank, "CP failed:", type(e).__name__, str(e)[:300], flush=True)
    if e.__context__ is not None:
        print(rank, "first error:", type(e.__context__).__name__, str(e.__context__)[:300], flush=True)
dist.destroy_process_group()
