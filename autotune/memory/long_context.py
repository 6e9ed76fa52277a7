"""Savers for activations and long sequences: context parallelism, activation offloading, packing.

Kept apart from the base memory model so each term sits in one place with its source:

- Context parallelism (accelerate's ParallelismConfig `cp_size`, FSDP2 only; torch's
  `context_parallel` with ring attention): each of `cp` ranks holds 1/cp of every sequence, so
  every per-token tensor (saved activations, backward transients, the LM head's tiles) is that
  of a sequence `cp` times shorter. The weights stay sharded over all ranks (accelerate's FSDP
  mesh is dp_shard x cp). Ring attention keeps the next K/V block in flight beside its own (and
  their gradients in backward): 2 x (K + V) of the local shard per attention call. torch's
  context parallel has sharding rules only for the CUDA SDPA kernels (flash, efficient, cuDNN);
  on the CPU it fails ("aten._scaled_dot_product_flash_attention_for_cpu.default does not have a
  sharding strategy registered"), so the planner offers it on GPUs only.
- Ulysses sequence parallelism (accelerate's `sp_size` with the DeepSpeed backend, DeepSpeed's
  ALST `UlyssesSPAttentionHF`): the same 1/sp share of every per-token tensor outside attention;
  around attention, all-to-alls trade the sequence split for a head split, so each rank holds
  the whole sequence for heads/sp heads (the same bytes). The in-flight all-to-all buffers are
  counted like the ring's. DeepSpeed refuses a model whose head count sp does not divide, or
  whose key/value head count and sp do not divide one another (UlyssesSPAttentionHF).
- Activation offloading (TRL's SFTConfig `activation_offloading`, trl.models.activation_offloading):
  every saved tensor of 1 KiB or more that is not a parameter goes to pinned host RAM during
  forward on a second CUDA stream (the last 5 kept on the device until their copies finish, and
  a storage saved twice within those 5 kept once), and comes back when its autograd node runs
  in backward, dropped when the next node starts. On the device: the per-token tensors outside
  the layers (the last saved, in that stash when backward begins) and, during a layer's
  backward, that layer's tensors; host RAM holds the layers' saved tensors, per process.
  Checked by running TRL's own hooks on fake tensors (bench/memory_validation.py --savers).
- Padding-free packing (TRL's `packing` with the default "bfd" strategy, which turns on
  `padding_free`): examples are packed best-fit into rows of `max_length` tokens and each row is
  one flattened sequence with position_ids, so no padding is computed. A row is then always full:
  the peak is the same as an unpacked batch whose longest example reaches max_length (what the
  estimate assumes), but there are fewer, fuller steps.
"""

from __future__ import annotations

import math
from dataclasses import replace

from llmwizard.autotune.memory.activations import (
    FOUR_NORM_MODELS,
    activation_bytes,
    adapted_linears,
    attention_kernel,
    fixed_token_bytes,
    layout,
    liger_layers,
)
from llmwizard.autotune.data.dataset import DatasetProfile
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import Goals
from llmwizard.autotune.machine.hardware_types import HardwareProfile
from llmwizard.autotune.model.model_types import ModelSpec
from llmwizard.autotune.train_setup import TrainSetup

# How full best-fit decreasing packs rows (TRL's bfd on chat data: a few percent is left over).
PACKING_FILL = 0.97
# Where the planner considers splitting a sequence over GPUs: shorter ones fit one GPU anyway.
CP_MIN_TOKENS = 16384


def ulysses_splits(model: ModelSpec, sp: int) -> bool:
    """Whether DeepSpeed's Ulysses can split this model's attention over `sp` ranks: the query
    heads divide by sp, and the key/value heads divide by sp or sp by them (each rank then holds
    a copy of its key/value head)."""
    kv = model.num_kv_heads or model.num_heads
    return model.num_heads % sp == 0 and (kv % sp == 0 or sp % kv == 0)


def ulysses_words(model: ModelSpec, sp: int, world: int) -> str:
    """Why Ulysses cannot split this model over `sp` of `world` ranks ("" when it can)."""
    if ulysses_splits(model, sp):
        return ""
    kv = model.num_kv_heads or model.num_heads
    usable = [n for n in range(2, world + 1) if world % n == 0 and ulysses_splits(model, n)]
    return (f"with DeepSpeed's Ulysses needs the attention heads split evenly: {model.name} has "
            f"{model.num_heads} heads and {kv} key/value heads ("
            + (f"sizes that split them and divide the {world} processes: {', '.join(map(str, usable))}"
               if usable else f"no size that divides the {world} processes splits them") + ")")


def check_plan_split(model: ModelSpec, strategy: str, cp: int, world: int, where: str) -> None:
    """Refuse a plan (a plan.yaml edited by hand) whose Ulysses split DeepSpeed would refuse at
    launch; `where` names the file."""
    problem = ulysses_words(model, cp, world) if cp > 1 and strategy in ("zero2", "zero3") else ""
    if problem:
        raise UserError(f"{where}: context_parallel {cp} {problem}.", title="Context parallelism",
                        fix=f"Set context_parallel in {where} to a size that splits them, or to 1.")


def context_parallel_sizes(hardware: HardwareProfile, model: ModelSpec, base: TrainSetup, goals: Goals,
                           world: int, effective: int) -> list[int]:
    """The context-parallel sizes the search tries: 1, and for long sequences on several GPUs of
    one machine, 2, 4 and 8 where they divide the GPUs and leave whole micro-batches. Asked for:
    that size, checked."""
    if goals.context_parallel:
        cp = goals.context_parallel
        problem = ("needs GPUs with FSDP2: torch's context parallelism shards only the CUDA attention kernels "
                   "(on the CPU, DeepSpeed's Ulysses splits sequences: strategy zero2 or zero3 over two or more "
                   "processes)"
                   if cp > 1 and hardware.device != "cuda" and goals.strategy in (None, "fsdp") else
                   f"must divide the number of processes ({world})" if world % cp else
                   "needs strategy fsdp (FSDP2) or zero2/zero3 (Ulysses)" if cp > 1 and goals.strategy not in (
                       None, "fsdp", "zero2", "zero3") else
                   "cannot be combined with packing (TRL refuses it)" if cp > 1 and goals.packing else
                   ulysses_words(model, cp, world) if cp > 1 and goals.strategy in ("zero2", "zero3") else
                   f"needs SDPA attention; {model.model_type} runs eager" if cp > 1 and attention_kernel(
                       model, base) == "eager" else "")
        if problem:
            raise UserError(f"Context parallelism over {cp} GPUs {problem}.", title="Context parallelism",
                            fix=("Turn packing off (--no-packing), or leave --context-parallel to the planner."
                                 if "packing" in problem else
                                 "Leave --context-parallel to the planner, or change the value."))
        return [cp]
    if (hardware.device != "cuda" or world < 2 or base.seq_len < CP_MIN_TOKENS or goals.packing
            or goals.strategy not in (None, "fsdp", "zero2", "zero3") or attention_kernel(model, base) == "eager"):
        return [1]
    local = hardware.gpus_per_node
    return [1] + [cp for cp in (2, 4, 8) if local % cp == 0 and world % cp == 0 and effective % (world // cp) == 0]


def per_rank(setup: TrainSetup) -> TrainSetup:
    """The setup one context-parallel rank runs its step tensors for: 1/cp of each sequence."""
    if setup.cp <= 1:
        return setup
    return replace(setup, seq_len=math.ceil(setup.seq_len / setup.cp), cp=1)


def ring_buffers(model: ModelSpec, setup: TrainSetup) -> float:
    """Ring attention's K/V blocks in flight, with their gradients in backward (bytes, one rank)."""
    if setup.cp <= 1:
        return 0.0
    local_tokens = setup.micro_batch * math.ceil(setup.seq_len / setup.cp)
    kv = 2 * local_tokens * model.num_kv_heads * model.head_dim * layout(model, setup).compute
    return 2 * 2 * kv


def offloaded_activations(model: ModelSpec, setup: TrainSetup) -> float:
    """Bytes of the decoder layers' saved activations that activation offloading moves to host RAM
    (one process). TRL brings each tensor back when its autograd node runs in backward and drops
    it once the next node starts, so a layer's tensors return only during that layer's backward
    (llmwizard.autotune.memory counts one layer back there). Staying on the device: the per-token
    tensors outside the layers (the final norm's and the LM head's), and each of HF's RMSNorms'
    fp32 input, which the norm saves twice (for the square and for the product): TRL offloads a
    storage once and keeps a second save of it on the device, as it does any storage saved twice
    within its 5-tensor window. (Liger's norms save their input once.)"""
    if not setup.offload_activations:
        return 0.0
    rank = per_rank(setup)
    total = activation_bytes(model, rank)
    outside = rank.micro_batch * rank.seq_len * fixed_token_bytes(model, rank)
    kept = 0.0
    if not rank.checkpointing and not liger_layers(model, rank):
        norms = 4 if model.model_type in FOUR_NORM_MODELS else 2
        inputs = model.num_layers * norms - (1 if rank.method != "full" else 0)  # (LoRA: the first keeps none)
        kept = rank.micro_batch * rank.seq_len * inputs * 4 * model.hidden_size
    return max(0.0, total - outside - kept)


def offload_stash_bytes(model: ModelSpec, setup: TrainSetup) -> float:
    """What TRL's forward stash still holds on the device when backward begins: its last offloaded
    tensors (5 saved tensors, counted by id whatever their size), whose copies it waits for only at
    the first backward hook (counted in the forward's LM head phase). After the per-token tensors
    outside the layers, the last saved are the last layer's MLP's: the gate, activation and up
    outputs and down_proj's saved input; with LoRA, whose adapters save three tensors each,
    down_proj's adapter's mask and cast input. Under
    checkpointing the last saved are layer inputs and the tensors outside the layers: nothing more.
    Checked against TRL's own hooks on fake tensors (bench/memory_validation.py --savers)."""
    if not setup.offload_activations or setup.checkpointing:
        return 0.0
    rank = per_rank(setup)
    lay = layout(model, rank)
    c, inter = lay.compute, model.intermediate_size
    if rank.method == "full":  # the gate, activation and up outputs and down_proj's input
        mlp = ((2 if liger_layers(model, rank) else 3) + 1) * c * inter
    elif any(lin.name == "down_proj" for lin in adapted_linears(model, rank)):
        # LoRA saves more, smaller tensors per linear: only down_proj's adapter's mask and input
        mlp = ((lay.mask + c) if rank.lora_dropout > 0 else c) * inter
    else:
        mlp = 0
    return rank.micro_batch * rank.seq_len * mlp


def packed_rows(dataset: DatasetProfile, max_length: int, eval_fraction: float) -> int:
    """Training rows after best-fit packing into rows of `max_length` tokens."""
    tokens = dataset.total_tokens * (1 - eval_fraction)
    per_example = dataset.total_tokens / max(1, dataset.num_examples)
    kept = min(max_length, per_example)  # examples longer than a row are truncated ("bfd")
    return max(1, math.ceil(tokens * kept / per_example / (max_length * PACKING_FILL)))


def packing_words(dataset: DatasetProfile, max_length: int, eval_fraction: float, effective: int,
                  on: bool) -> str:
    """The packing reason: how the step count and the tokens per step change, and the memory."""
    examples = max(1, round(dataset.num_examples * (1 - eval_fraction)))
    rows = packed_rows(dataset, max_length, eval_fraction)
    before, after = math.ceil(examples / effective), math.ceil(rows / effective)
    per_row = examples / rows
    memory = ("the peak memory is unchanged (every row is a full max_length row, the case the estimate "
              "already sizes), but every micro-batch now carries that peak")
    if on:
        return (f"on: padding-free packing (best-fit) puts {per_row:.1f} examples in each {max_length}-token row: "
                f"{after} steps per epoch instead of {before}, each with {per_row:.1f}x the tokens; {memory}")
    if per_row < 1.5:
        return f"off: examples nearly fill {max_length}-token rows ({per_row:.1f} per row); packing gains little"
    return (f"off (--packing turns it on): padding-free packing would put {per_row:.1f} examples in each "
            f"{max_length}-token row: {after} steps per epoch instead of {before}; {memory}")
