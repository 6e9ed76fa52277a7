"""Check llmwizard.autotune.memory against the tensor-level peak of real training steps, measured without memory.

Each case builds a real architecture at its real widths (hidden, MLP, heads, vocabulary) with fewer
layers, under torch's FakeTensorMode (tensors have shapes and dtypes, no storage), and runs two
training steps the way the runner's TRL SFTTrainer does on a GPU: weights in the dtype the exporter
writes (float32 for full fine-tuning, bfloat16 for a LoRA base, PEFT's adapters in float32), the
forward under bf16 autocast, TRL's fused LM head (per-token log-probs, entropy and top-1 accuracy in
vocabulary chunks), backward, gradient clipping, optimizer step, zero_grad. MemTracker
(torch.distributed._tools.mem_tracker) records the tensor-level peak; `estimate()` is asked about
the SAME reduced config, and the table compares the two.

What a CPU fake run differs in from a GPU run, and how this script handles it:
- Attention: on a GPU, HF's SDPA path skips the all-ones mask and runs the flash kernel with GQA.
  Fake tensors hide the mask's values (HF then builds a mask and repeats K/V), and the CPU kernel
  is not the GPU one. The cases register an attention function that calls the CUDA flash kernel's
  own ATen op (`_scaled_dot_product_flash_attention`, whose meta implementation torch ships), with
  no mask, as the GPU run would; eager cases run HF's eager attention unchanged.
- Kernels with CPU-specific buffers: TRL's fused LM head folds vocabulary tiles with torch ops
  (several fp32 tiles) instead of Triton (in place), and CPU dropout keeps a mask in the input's
  dtype instead of bool. The estimate is asked with device="cpu", which models those two.
- Autograd sums two gradients of one tensor in place, except for tensor subclasses such as
  FakeTensor: a tied embedding's gradients and their sum coexist here, one dense [vocab, hidden]
  gradient more than on a GPU. `expected_tensor_peak` adds it to the estimate's embedding-backward
  phase (`fake_tensor_extra`); the memory model itself knows nothing of fake tensors.
- FSDP2: see compare(). QLoRA: bitsandbytes' Params4bit is made with Tensor._make_subclass, which
  refuses a FakeTensor (its ops do have fake kernels), so QLoRA is modelled analytically only.
- CUDA context, NCCL and allocator slack are not tensors: compared figures exclude them, and no
  GPU was available to check OVERHEAD.

Run: python bench/memory_validation.py [--quick] [--out bench/results/memory_validation.txt]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/liger_mirror.py

from llmwizard.autotune.memory.activations import layout  # noqa: E402
from llmwizard.autotune.memory import MemoryEstimate, TrainSetup, estimate  # noqa: E402
from llmwizard.autotune.model.model_spec import spec_from_config  # noqa: E402

# Real widths from each model's published config.json; the layer count is set per case.
MODELS: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                         tie_word_embeddings=True, max_position_embeddings=131072, rope_theta=500000.0),
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                         tie_word_embeddings=False, max_position_embeddings=131072, rope_theta=500000.0),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                       tie_word_embeddings=False, max_position_embeddings=32768, rope_theta=1000000.0),
    "gemma-2-2b": dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                       num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000,
                       tie_word_embeddings=True, max_position_embeddings=8192, query_pre_attn_scalar=256,
                       attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4096,
                       hidden_activation="gelu_pytorch_tanh"),
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPU_FLASH = "llmwizard_gpu_sdpa"  # a name with "flash" in it would be looked up as a hub kernel
# Optimizers measured on real tensors: their steps read numbers (a weight's RMS, an SVD) that a
# fake tensor cannot give.
REAL_TENSOR_OPTIMIZERS = ("adalomo", "galore_adamw", "apollo_adamw")


@dataclass(frozen=True)
class Case:
    model: str
    method: str            # "full" or "lora"
    seq: int
    batch: int
    checkpointing: bool
    layers: int = 2
    attention: str = "sdpa"   # "sdpa" (GPU flash kernel) or "eager"
    optimizer: str = "adamw"
    lora_r: int = 16
    lora_dropout: float = 0.05
    strategy: str = "single"  # or "fsdp": FSDP2 full shard over `world` ranks of a fake process group
    world: int = 1
    precision: str = "bf16"   # or "pure_bf16": bf16 weights, no autocast (runner/export/configs.py)
    liger: bool = False       # Liger's layer kernels, as allocation mirrors (bench/liger_mirror.py)
    offload_activations: bool = False  # TRL's activation offloading, its real hooks (see _trl_offloading)

    @property
    def name(self) -> str:
        parts = [self.model, self.method, f"L{self.layers}", f"s{self.seq}", f"b{self.batch}"]
        parts += [f"fsdp{self.world}"] if self.strategy == "fsdp" else []
        parts += ["ckpt"] if self.checkpointing else []
        parts += [self.attention] if self.attention != "sdpa" else []
        parts += [self.optimizer] if self.optimizer != "adamw" else []
        parts += [f"drop{self.lora_dropout:g}"] if self.method == "lora" and self.lora_dropout != 0.05 else []
        parts += [f"r{self.lora_r}"] if self.method == "lora" and self.lora_r != 16 else []
        parts += [self.precision] if self.precision != "bf16" else []
        parts += ["liger"] if self.liger else []
        parts += ["act-offload"] if self.offload_activations else []
        return " ".join(parts)


def reduced_config(case: Case) -> dict[str, Any]:
    return {**MODELS[case.model], "num_hidden_layers": case.layers}


def case_setup(case: Case) -> TrainSetup:
    """The memory model's knobs for the case, as the planner would set them on a CPU."""
    return TrainSetup(method=case.method, strategy=case.strategy, num_gpus=case.world,  # type: ignore[arg-type]
                      micro_batch=case.batch, seq_len=case.seq, checkpointing=case.checkpointing,
                      precision=case.precision, optimizer=case.optimizer,  # type: ignore[arg-type]
                      attention=case.attention, lora_r=case.lora_r, lora_targets=LORA_TARGETS,  # type: ignore[arg-type]
                      lora_dropout=case.lora_dropout, device="cpu", liger=case.liger,
                      offload_activations=case.offload_activations)


def estimate_case(case: Case) -> MemoryEstimate:
    """llmwizard.autotune.memory's figure for the same reduced model and setup."""
    spec = spec_from_config(case.model, "catalog", None, reduced_config(case))
    return estimate(spec, case_setup(case), budget=1 << 50)


def fake_tensor_extra(case: Case) -> int:
    """Bytes a fake-tensor step holds at the embedding's backward beyond what a real one does.

    Autograd sums a tensor's two gradients in place, except for tensor subclasses such as
    FakeTensor: the tied embedding's dense [vocab, hidden] gradient, the head's and their sum
    coexist here, one gradient (per shard) more than the estimate's real-tensor figure. Cases whose
    optimizer runs on real tensors, LoRA and untied models have no such gradient.
    """
    config = reduced_config(case)
    if case.method != "full" or not config["tie_word_embeddings"] or case.optimizer in REAL_TENSOR_OPTIMIZERS:
        return 0
    spec = spec_from_config(case.model, "catalog", None, config)
    setup = case_setup(case)
    return spec.vocab_size * spec.hidden_size * layout(spec, setup).trainable // setup.grad_shards


def expected_tensor_peak(case: Case) -> tuple[int, str]:
    """The estimate's tensor bytes at its peak on this bench's fake tensors, and that phase.

    FSDP cases leave out the optimizer step (see compare())."""
    est = estimate_case(case)
    phases = dict(est.phases)
    if "backward (embedding)" in phases:  # (AdaLomo's fused step has no such phase)
        phases["backward (embedding)"] += fake_tensor_extra(case)
    compared = [phase for phase in phases if case.strategy != "fsdp" or phase != "optimizer step"]
    peak_at = max(compared, key=lambda phase: phases[phase])
    return phases[peak_at], peak_at


def _register_gpu_flash() -> None:
    """An attention function with the GPU flash kernel's memory: no mask, GQA without repeated K/V."""
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    def gpu_flash(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
                  dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
        if torch.is_autocast_enabled("cpu"):  # CUDA autocast lists SDPA as a half-precision op
            dtype = torch.get_autocast_dtype("cpu")
            query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
        out = torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout, True, False,
                                                                  scale=scaling)[0]
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(GPU_FLASH, gpu_flash)
    AttentionMaskInterface.register(GPU_FLASH, lambda *args, **kwargs: None)  # unpadded: is_causal, no mask


@contextlib.contextmanager
def _trl_offloading(model: Any) -> Iterator[Any]:
    """TRL's activation offloading (trl.models.activation_offloading, as SFTTrainer builds it with
    `get_act_offloading_ctx_manager`) run on this machine's fake tensors: its own pack and unpack
    hooks, stashes and deduplication decide what stays on the device. Only the device boundary is
    stood in for: the CPU plays the accelerator, the "host" copies are made on the meta device (so
    MemTracker's CPU figure is the device's), streams and events are no-ops (they order copies;
    what stays alive is held by references), and a storage's identity stands in for its data
    pointer, which fake tensors lack."""
    import types
    from unittest import mock

    import torch
    import trl.models.activation_offloading as offloading

    class Stream:
        def wait_event(self, *args: Any) -> None: ...
        def wait_stream(self, *args: Any) -> None: ...
        def record_event(self, *args: Any) -> None: ...
        def synchronize(self) -> None: ...

    compute = Stream()
    device_module = types.SimpleNamespace(Stream=Stream, stream=lambda _: contextlib.nullcontext(),
                                          current_stream=lambda: compute, empty_cache=lambda: None)

    def to_host(make: Any) -> Any:
        def made(*args: Any, **kwargs: Any) -> Any:
            if "pin_memory" in kwargs:  # TRL's host buffer
                kwargs.pop("pin_memory")
                kwargs["device"] = "meta"
            return make(*args, **kwargs)
        return made

    def storage_key(tensor: Any) -> tuple:
        return (tensor.untyped_storage()._cdata + tensor.storage_offset(), tensor.dtype)

    with (mock.patch.object(torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cpu")),
          mock.patch.object(torch, "get_device_module", lambda *a: device_module),
          mock.patch.object(offloading, "_get_unique_tensor_key", storage_key),
          mock.patch.object(torch, "empty_like", to_host(torch.empty_like)),
          mock.patch.object(torch, "empty", to_host(torch.empty)),
          mock.patch.object(torch.Tensor, "record_stream", lambda self, stream: None)):
        yield offloading.get_act_offloading_ctx_manager(model)


def _frozen_safe_tracker() -> Any:
    """MemTracker that installs gradient hooks only on parameters that get gradients.

    MemTracker hooks every parameter, and a tensor without requires_grad refuses a hook, so a
    frozen LoRA base would abort the run.
    """
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class FrozenSafeMemTracker(MemTracker):
        def _track_module_params_and_buffers(self, module: Any, install_grad_hooks: bool = True) -> tuple[int, int]:
            def grad_hook(grad: Any) -> None:
                self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

            param_memory = buffer_memory = 0
            for param in module.parameters():
                winfos = self._update_and_maybe_create_winfos(param, _MemRefType.PARAM)
                param_memory += sum(winfo.mem_consumed for winfo in winfos)
                if param.grad is not None:
                    self._update_and_maybe_create_winfos(param.grad, _MemRefType.GRAD)
                if install_grad_hooks and param.requires_grad and self._param_to_grad_hook_handles.get(param) is None:
                    self._param_to_grad_hook_handles[param] = (
                        param.register_hook(grad_hook),
                        param.register_post_accumulate_grad_hook(lambda p: grad_hook(p.grad)),
                    )
            for buffer in module.buffers():
                winfos = self._update_and_maybe_create_winfos(buffer, _MemRefType.BUFFER)
                buffer_memory += sum(winfo.mem_consumed for winfo in winfos)
            return param_memory, buffer_memory

    return FrozenSafeMemTracker()


def _optimizer(case: Case, params: list[Any], model: Any = None) -> Any:
    """The optimizer the HF Trainer builds for the exporter's `optim` (foreach on a GPU)."""
    import torch

    if case.optimizer == "adalomo":
        # lomo-optim allocates its states with `.cuda()`; the CPU stands in for the GPU here.
        from unittest import mock

        from lomo_optim import AdaLomo

        with mock.patch.object(torch.Tensor, "cuda", lambda self, *args, **kwargs: self):
            return AdaLomo(model, lr=1e-4)

    if case.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, fused=True)  # the exported adamw_torch_fused
    if case.optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-4, foreach=True)
    if case.optimizer in ("galore_adamw", "apollo_adamw"):
        # transformers' _setup_low_rank_optimizer: low-rank groups for the attention and MLP linears
        from llmwizard.autotune.memory.savers import GALORE_RANK, GALORE_TARGETS

        targets = [m.weight for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and any(t in name for t in GALORE_TARGETS)]
        chosen = {id(t) for t in targets}
        others = {"params": [p for p in params if id(p) not in chosen]}
        if case.optimizer == "apollo_adamw":
            from apollo_torch import APOLLOAdamW

            return APOLLOAdamW([others, {"params": targets, "rank": GALORE_RANK, "proj": "random",
                                         "scale_type": "channel", "update_proj_gap": 200, "scale": 1.0,
                                         "proj_type": "std"}], lr=1e-4)
        from galore_torch import GaLoreAdamW

        return GaLoreAdamW([others, {"params": targets, "rank": GALORE_RANK, "update_proj_gap": 200, "scale": 0.25,
                                     "proj_type": "std"}], lr=1e-4)
    if case.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=1e-4, scale_parameter=False, relative_step=False)
    raise ValueError(f"no fake-mode optimizer for {case.optimizer}")


def measure(case: Case) -> dict[str, int]:
    """Tensor-level peak bytes of two training steps (second step's peak included)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    _register_gpu_flash()
    config_dict = reduced_config(case)
    config = AutoConfig.for_model(**config_dict)
    pure = case.precision == "pure_bf16" and case.method == "full"
    # runner/export/__init__.py's `dtype`: fp32 masters for mixed-precision full fine-tuning
    weights = torch.float32 if case.method == "full" and not pure else torch.bfloat16
    # The optimizers run on real tensors (see below) get a real, initialised model: buffers such as
    # RoPE's frequencies must hold numbers (an SVD refuses NaN gradients).
    real = case.optimizer in REAL_TENSOR_OPTIMIZERS
    default = torch.get_default_dtype()
    torch.set_default_dtype(weights)
    try:
        with torch.device("cpu" if real else "meta"):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(
                config, attn_implementation=GPU_FLASH if case.attention == "sdpa" else "eager")
    finally:
        torch.set_default_dtype(default)
    # TRL patches the base model's forward before PEFT wraps it (SFTTrainer.__init__).
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    if case.liger:
        import liger_mirror

        liger_mirror.apply(model)
    base = model
    if case.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=case.lora_r, lora_alpha=2 * case.lora_r,
                                                 lora_dropout=case.lora_dropout, target_modules=LORA_TARGETS,
                                                 task_type="CAUSAL_LM"))
    if case.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if case.method != "full":
            model.enable_input_require_grads()  # SFTTrainer does this for PEFT + gradient checkpointing
    model.train()

    mesh = _fake_mesh(case.world) if case.strategy == "fsdp" else None
    # AdaLomo runs on real tensors (its update reads each weight's RMS as a Python number, which a
    # fake tensor cannot give), GaLore and APOLLO too (LAPACK's SVD needs data): real widths, few
    # layers, real CPU memory.
    with contextlib.nullcontext() if real else FakeTensorMode(allow_non_fake_inputs=True):
        if not real:
            model.to_empty(device="cpu")
            base.tie_weights()  # to_empty under FakeTensorMode swaps in new parameters, untying lm_head
        if mesh is not None:
            _fully_shard(model, base, mesh)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = _optimizer(case, params, model)
        ids = torch.randint(0, config.vocab_size, (case.batch, case.seq))
        if mesh is not None:
            from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

            tracker = FSDPMemTracker(model, optimizer)
            tracker.track_inputs((ids,))
        else:
            tracker = _frozen_safe_tracker()
            tracker.track_external(model, optimizer)
        phases: dict[str, int] = {}
        with tracker, (_trl_offloading(model) if case.offload_activations else contextlib.nullcontext()) as offload:
            for step in range(2):
                # SFTTrainer.training_step runs forward and backward inside the offloading context
                stepping = offload if offload is not None else contextlib.nullcontext()
                stepping.__enter__()
                # accelerate wraps forward in autocast (not under pure bf16: mixed_precision "no")
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not pure):
                    out = model(input_ids=ids, labels=ids, fused_lm_head=True)
                phases["after_forward"] = _total(tracker)
                # SFTTrainer.compute_loss, outside autocast (accelerate converts outputs to fp32)
                loss = -out.log_probs.float().sum() / out.label_mask.sum().clamp(min=1)
                out.entropy.detach().sum(), out.is_top1.sum()
                if case.optimizer == "adalomo":  # accelerate's lomo_backward: the update runs inside backward
                    optimizer.fused_backward(loss, 1e-4)
                    del out, loss
                    phases["after_backward"] = _total(tracker)
                    if step == 0:
                        tracker.reset_mod_stats()
                    continue
                loss.backward()
                del out, loss
                stepping.__exit__(None, None, None)
                phases["after_backward"] = _total(tracker)
                if mesh is not None and step == 1:
                    break  # see the note on FSDP in compare()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if step == 0:
                    tracker.reset_mod_stats()
                    if mesh is not None:  # (private) restart the peak after the first optimizer step
                        tracker._peak_mem.clear()
                        tracker._peak_mem_snap.clear()
        peak = tracker.get_tracker_snapshot("peak")
    (snapshot,) = [snap for device, snap in peak.items() if str(device) != "meta"]  # (meta: host copies)
    result = {str(key).split(".")[-1].lower(): int(value) for key, value in snapshot.items()}
    return {**result, **phases}


def _fake_mesh(world: int) -> Any:
    """A device mesh over a fake process group: collectives only shape their outputs."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized() and dist.get_world_size() != world:
        dist.destroy_process_group()
    if not dist.is_initialized():
        dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    return init_device_mesh("cpu", (world,))


def _fully_shard(model: Any, base: Any, mesh: Any) -> None:
    """accelerate's FSDP2 layout: each decoder layer a unit (resharded after forward), bf16 gathers.

    accelerate also groups the final norm and LM head (with a tied embedding) into a unit that is
    not resharded after forward; here they stay in the root, which FSDP2 does not reshard after
    forward either. (FSDPMemTracker cannot follow that separate group: TRL's fused head reads
    lm_head.weight without calling the module.)
    """
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)
    for layer in base.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def _total(tracker: Any) -> int:
    return int(sum(snap["Total"] for device, snap in tracker.get_tracker_snapshot().items() if str(device) != "meta"))


def compare(case: Case) -> tuple[int, int, str]:
    """(measured, estimated) tensor bytes at the peak, and the phase the estimate peaks in.

    FSDP cases stop before the second optimizer step: under FakeTensorMode, DTensor's sharding
    propagation runs in the same fake mode as the step, so MemTracker counts its global-shape
    tensors (the step read 10-27x the sharded state size). Forward and backward run on local
    tensors and are measured; the estimate is compared over the same phases.
    """
    measured = measure(case)["total"]
    predicted, phase = expected_tensor_peak(case)
    return measured, predicted, phase


def matrix(quick: bool) -> list[Case]:
    """Every model x method x (sequence, micro-batch) x checkpointing, plus single-knob variations.

    Reduced to 2-4 layers, the vocabulary-sized embedding weighs more than in the real model, so
    the large token counts are what make activations and the LM head set the peak.
    """
    if quick:
        return [
            Case("llama-3.2-1b", "full", 4096, 4, False, layers=4),
            Case("llama-3.2-1b", "lora", 2048, 2, False, layers=4),
            Case("llama-3.2-1b", "lora", 4096, 4, True, layers=4),
            Case("qwen2.5-7b", "full", 2048, 2, True),
            Case("gemma-2-2b", "lora", 1024, 2, False, layers=4, attention="eager"),
            Case("llama-3.1-8b", "lora", 4096, 4, False),
            Case("llama-3.2-1b", "full", 4096, 2, True, layers=4, strategy="fsdp", world=4),
        ]
    cases = []
    for model, layers in (("llama-3.2-1b", 4), ("llama-3.1-8b", 2), ("qwen2.5-7b", 2)):
        for method in ("full", "lora"):
            for seq, batch in ((512, 1), (2048, 2), (4096, 4)):
                for checkpointing in (False, True):
                    cases.append(Case(model, method, seq, batch, checkpointing, layers=layers))
    for method in ("full", "lora"):
        for seq, batch in ((512, 1), (1024, 2), (2048, 2)):
            for checkpointing in (False, True):
                cases.append(Case("gemma-2-2b", method, seq, batch, checkpointing, layers=4, attention="eager"))
    cases += [
        Case("llama-3.2-1b", "lora", 2048, 2, False, layers=4, attention="eager"),
        Case("llama-3.2-1b", "full", 2048, 2, False, layers=4, attention="eager"),
        Case("llama-3.2-1b", "lora", 2048, 2, False, layers=4, lora_dropout=0.0),
        Case("llama-3.2-1b", "lora", 2048, 2, False, layers=4, lora_r=64),
        Case("llama-3.2-1b", "full", 1024, 1, False, layers=4, optimizer="sgd"),
        Case("llama-3.2-1b", "full", 1024, 1, False, layers=4, optimizer="adafactor"),
        Case("llama-3.2-1b", "lora", 2048, 2, False, layers=4, optimizer="adafactor"),
        Case("llama-3.1-8b", "full", 2048, 1, False, layers=1),
        Case("llama-3.1-8b", "lora", 8192, 1, True, layers=4),
    ]
    # FSDP2 full shard over a fake process group; tied-embedding models only, whose layout here
    # (embedding, norm and head in the never-resharded root) is accelerate's.
    for method in ("full", "lora"):
        for seq, batch, checkpointing, world in ((1024, 1, False, 4), (4096, 2, True, 2), (8192, 1, False, 8)):
            cases.append(Case("llama-3.2-1b", method, seq, batch, checkpointing, layers=4, strategy="fsdp",
                              world=world))
    cases += [Case("gemma-2-2b", method, 2048, 1, False, layers=4, attention="eager", strategy="fsdp", world=4)
              for method in ("full", "lora")]
    # Odd shapes first run after the model was written (the first one exposed the eager backward term).
    cases += [
        Case("qwen2.5-7b", "lora", 3000, 3, False, layers=3, attention="eager"),
        Case("llama-3.1-8b", "full", 1536, 3, True, layers=3),
        Case("gemma-2-2b", "full", 3072, 1, False, layers=3, attention="eager", strategy="fsdp", world=2),
        Case("qwen2.5-7b", "full", 6000, 2, False, layers=3),
        Case("llama-3.2-1b", "lora", 700, 5, False, layers=6, lora_r=4, lora_dropout=0.1),
        Case("llama-3.2-1b", "full", 3000, 3, True, layers=5, optimizer="adafactor"),
        Case("gemma-2-2b", "lora", 3500, 1, True, layers=3, attention="eager", lora_r=32),
        # long LoRA without checkpointing: the widest adapter's forward temporaries set the peak
        Case("qwen2.5-7b", "lora", 16384, 2, False, layers=2),
    ]
    return cases


def saver_cases() -> list[Case]:
    """The savers' terms that run under FakeTensorMode: pure bf16 (bf16 weights, gradients and
    AdamW states, no autocast); and on real tensors (see measure()), AdaLomo (its update reads
    weights' RMS as numbers), GaLore (LAPACK's SVD needs data) and APOLLO; Liger's layer kernels
    through mirrors of their allocations (bench/liger_mirror.py: Triton runs on GPUs only). Not here: torchao's
    low-bit AdamW (its step is torch.compile'd over tensor subclasses, which neither FakeTensorMode
    nor MemTracker's dispatch mode can follow; bench/torchao_states.py measures its states and its
    step's temporaries on real tensors), and context parallelism (torch's ring attention has no CPU
    kernel; a rank's tensors are the measured ones at seq/cp). TRL's activation offloading runs its
    own hooks, with the host copies on the meta device (_trl_offloading)."""
    return [
        Case("llama-3.2-1b", "full", 512, 1, False, layers=4, precision="pure_bf16"),
        Case("llama-3.2-1b", "full", 2048, 2, False, layers=4, precision="pure_bf16"),
        Case("llama-3.2-1b", "full", 4096, 4, True, layers=4, precision="pure_bf16"),
        Case("llama-3.1-8b", "full", 4096, 4, False, layers=2, precision="pure_bf16"),
        Case("qwen2.5-7b", "full", 2048, 2, True, layers=2, precision="pure_bf16"),
        Case("gemma-2-2b", "full", 1024, 2, False, layers=4, attention="eager", precision="pure_bf16"),
        Case("llama-3.2-1b", "full", 1024, 1, False, layers=4, optimizer="adafactor", precision="pure_bf16"),
        # AdaLomo, on real tensors (see measure()): eager attention, which the CPU runs as a GPU would.
        Case("llama-3.2-1b", "full", 512, 1, False, layers=2, attention="eager", optimizer="adalomo",
             precision="pure_bf16"),
        Case("llama-3.2-1b", "full", 1024, 2, True, layers=2, attention="eager", optimizer="adalomo",
             precision="pure_bf16"),
        Case("llama-3.2-1b", "full", 512, 1, False, layers=2, attention="eager", optimizer="adalomo"),
        Case("llama-3.1-8b", "full", 256, 1, True, layers=1, attention="eager", optimizer="adalomo",
             precision="pure_bf16"),
        # GaLore's AdamW, on real tensors too (a 7B vocabulary's fp32 states do not fit this machine's RAM)
        Case("llama-3.2-1b", "full", 512, 1, False, layers=2, attention="eager", optimizer="galore_adamw"),
        Case("llama-3.2-1b", "full", 1024, 2, True, layers=2, attention="eager", optimizer="galore_adamw",
             precision="pure_bf16"),
        # APOLLO's AdamW, on real tensors as GaLore (its projection is drawn with a seeded generator)
        Case("llama-3.2-1b", "full", 512, 1, False, layers=2, attention="eager", optimizer="apollo_adamw"),
        # Liger's layer kernels, as allocation mirrors (bench/liger_mirror.py)
        Case("llama-3.2-1b", "lora", 2048, 2, False, layers=4, liger=True),
        Case("llama-3.2-1b", "full", 2048, 2, False, layers=4, liger=True),
        Case("llama-3.2-1b", "lora", 4096, 4, True, layers=4, liger=True),
        Case("llama-3.1-8b", "lora", 4096, 2, True, layers=2, liger=True),
        Case("qwen2.5-7b", "full", 2048, 2, True, layers=2, liger=True),
        Case("gemma-2-2b", "lora", 1024, 2, False, layers=4, attention="eager", liger=True),
        Case("gemma-2-2b", "full", 1024, 2, False, layers=4, attention="eager", liger=True),
        Case("llama-3.2-1b", "full", 2048, 2, False, layers=4, precision="pure_bf16", liger=True),
        # TRL's activation offloading, its own pack/unpack hooks (_trl_offloading)
        Case("llama-3.2-1b", "lora", 2048, 2, False, layers=4, offload_activations=True),
        Case("llama-3.2-1b", "full", 2048, 2, False, layers=4, offload_activations=True),
        Case("qwen2.5-7b", "lora", 8192, 1, False, layers=2, offload_activations=True),
        Case("llama-3.2-1b", "lora", 4096, 2, True, layers=4, offload_activations=True),
        Case("gemma-2-2b", "full", 1024, 2, False, layers=4, attention="eager", offload_activations=True),
        Case("qwen2.5-7b", "lora", 4096, 2, False, layers=3, attention="eager", offload_activations=True),
        Case("gemma-2-2b", "lora", 2048, 2, False, layers=4, attention="eager", offload_activations=True),
        Case("llama-3.1-8b", "full", 2048, 1, True, layers=2, offload_activations=True),
    ]


# ----------------------------------------------------------------------------- vision tower

# Qwen2.5-VL-7B's vision tower at its real widths (config.json vision_config); depth reduced.
QWEN_VL_7B = dict(model_type="qwen2_5_vl", architectures=["Qwen2_5_VLForConditionalGeneration"],
                  text_config=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                   num_attention_heads=28, num_key_value_heads=4, vocab_size=152064),
                  vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                     out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                                     temporal_patch_size=2, window_size=112,
                                     fullatt_block_indexes=[7, 15, 23, 31]))


@dataclass(frozen=True)
class VisionCase:
    trains: bool               # full fine-tuning (fp32 weights, bf16 autocast) or a frozen bf16 tower (LoRA)
    grids: tuple[tuple[int, int, int], ...]  # (t, h, w) patches per image
    blocks: int = 2

    @property
    def patches(self) -> int:
        return sum(t * h * w for t, h, w in self.grids)

    @property
    def name(self) -> str:
        images = "+".join(f"{h * 14}x{w * 14}" for _, h, w in self.grids)
        return f"qwen2.5-vl-7b tower {'trained' if self.trains else 'frozen'} {images} L{self.blocks}"


def vision_matrix() -> list[VisionCase]:
    return [VisionCase(False, ((1, 32, 32), (1, 32, 32))), VisionCase(True, ((1, 32, 32), (1, 32, 32))),
            VisionCase(False, ((1, 48, 64),)), VisionCase(True, ((1, 48, 64),)),
            VisionCase(True, ((1, 16, 16),) * 4, blocks=4)]


def measure_vision(case: VisionCase) -> dict[str, int]:
    """Tensor bytes of the tower beyond its weights: after its forward and at its peak.

    The window and attention indices are computed from the real grid first (transformers accepts
    them precomputed): under FakeTensorMode their data-dependent sizes cannot be read. Attention
    runs the CUDA flash kernel's meta op over packed sequences, as flash-attention does on a GPU.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AttentionInterface
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
    from transformers.vision_utils import (get_vision_attention_seqlens, get_vision_position_ids,
                                           get_vision_window_index)

    def flash(module: Any, q: Any, k: Any, v: Any, attention_mask: Any = None, scaling: float | None = None,
              dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scaling)[0]
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("flash_attention_2", flash)
    vision = dict(QWEN_VL_7B["vision_config"], depth=case.blocks, fullatt_block_indexes=[case.blocks - 1])
    config = Qwen2_5_VLVisionConfig(**vision)
    grid = torch.tensor(case.grids)
    cu, _ = get_vision_attention_seqlens(grid, config)
    window_index, cu_window = get_vision_window_index(grid, spatial_merge_size=2, window_size=112, patch_size=14)
    given = {"position_ids": get_vision_position_ids(grid, 2), "cu_seqlens": cu,
             "max_seqlen": int((cu[1:] - cu[:-1]).max()), "window_index": window_index,
             "cu_window_seqlens": cu_window, "max_window_seqlen": int((cu_window[1:] - cu_window[:-1]).max())}
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32 if case.trains else torch.bfloat16)
    try:
        with torch.device("meta"):
            model = Qwen2_5_VisionTransformerPretrainedModel._from_config(config)
    finally:
        torch.set_default_dtype(default)
    model.config._attn_implementation = "flash_attention_2"
    model.requires_grad_(case.trains)
    model.train()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device="cpu")
        pixels = torch.randn(case.patches, 3 * 2 * 14 * 14)  # the processor's fp32 pixel_values
        tracker = _frozen_safe_tracker()
        tracker.track_external(model)
        with tracker:
            weights = _total(tracker)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                merged = model(pixels, grid_thw=grid, **given).pooler_output
            after = _total(tracker) - merged.numel() * merged.element_size()
            if case.trains:
                merged.float().sum().backward()
        (snapshot,) = tracker.get_tracker_snapshot("peak").values()
    return {"after_forward": after - weights, "peak": int(snapshot["Total"]) - weights}


def compare_vision(case: VisionCase) -> list[tuple[str, int, int]]:
    from llmwizard.autotune.memory import vision

    config = dict(QWEN_VL_7B, vision_config=dict(QWEN_VL_7B["vision_config"], depth=case.blocks))
    model = spec_from_config("qwen2.5-vl-7b", "catalog", None, config)
    setup = TrainSetup(method="full" if case.trains else "lora", precision="bf16", device="cuda",
                       image_patches=case.patches, micro_batch=1)
    measured = measure_vision(case)
    rows = [("kept after forward", measured["after_forward"], int(vision.saved_bytes(model, setup, case.trains)))]
    if not case.trains:
        rows.append(("forward peak", measured["peak"],
                     int(vision.saved_bytes(model, setup, False) + vision.forward_bytes(model, setup))))
    return rows


def vision_main(out: Path | None) -> int:
    import torch
    import transformers

    lines = [f"# llmwizard.autotune.memory.vision vs FakeTensorMode + MemTracker ({time.strftime('%Y-%m-%d')})",
             f"# torch {torch.__version__}, transformers {transformers.__version__}; Qwen2.5-VL-7B vision tower at its "
             "real widths (hidden 1280, MLP 3420, 16 heads), L blocks (the last one full attention), bf16 autocast,",
             "# flash attention over packed windows; tensor bytes beyond the tower's weights (pixels included)",
             f"{'case':<58} {'what':<20} {'patches':>7} {'measured MiB':>12} {'estimate MiB':>12} {'error':>8}"]
    print("\n".join(lines), flush=True)
    errors = []
    for case in vision_matrix():
        for what, measured, predicted in compare_vision(case):
            error = (predicted - measured) / measured
            errors.append(abs(error))
            line = (f"{case.name:<58} {what:<20} {case.patches:>7} {measured / 2**20:>12.1f} "
                    f"{predicted / 2**20:>12.1f} {error:>+8.1%}")
            lines.append(line)
            print(line, flush=True)
    summary = f"# {len(errors)} figures: median |error| {statistics.median(errors):.1%}, worst {max(errors):.1%}"
    lines.append(summary)
    print(summary)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a seven-case subset (about a minute)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--match", default="", help="only cases whose name contains this text")
    parser.add_argument("--savers", action="store_true", help="only the memory savers' cases (pure bf16)")
    parser.add_argument("--vision", action="store_true",
                        help="the vision-tower section instead (Qwen2.5-VL-7B's tower, llmwizard.autotune.memory.vision)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.vision:
        return vision_main(args.out)
    import peft
    import torch
    import transformers
    import trl

    lines = [f"# llmwizard.autotune.memory vs FakeTensorMode + MemTracker peaks ({time.strftime('%Y-%m-%d')})",
             f"# torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
             f"trl {trl.__version__}; bf16 autocast, TRL fused LM head, two steps",
             "# tensor bytes at the peak (no CUDA context, NCCL or allocator slack); reduced layer counts (L);",
             *(["# memory savers (--savers): pure bf16 runs without autocast on bf16 weights; the adafactor",
                "# case first measured -33.7% (HF Adafactor upcasts bf16 parameters and gradients) and was fixed;",
                "# adalomo, galore_adamw and apollo_adamw cases run the packages' optimizers on real tensors (real",
                "# widths, few layers). The first adalomo case measured +13.4% (a tied head's two gradient parts",
                "# were counted beside the update), the first galore one -16.1% (AdamW's second full-size",
                "# temporary for the embedding was missed); both were fixed. liger cases run allocation mirrors of",
                "# Liger's Triton kernels (bench/liger_mirror.py); the first version of their terms measured -1.1% on",
                "# the checkpointed LoRA case (its peak is in down_proj's backward, before Liger's in-place MLP",
                "# backward runs), which was fixed. act-offload cases run TRL's activation offloading hooks with the",
                "# host copies on the meta device; the first version of its terms (two layers kept on the device)",
                "# measured +24.4% and +8.1% on the first two: TRL brings tensors back node by node, and keeps each",
                "# norm's fp32 input (saved twice, stored once) on the device; both are counted now.",
                "# Differences from a GPU run and the savers not measurable here: bench/memory_validation.py."]
               if args.savers else
               ["# fsdpN: FSDP2 over N fake ranks, forward+backward only; the 7 cases before the last were first run",
                "# after the model was written. The last (32K tokens of LoRA without checkpointing) was added when the",
                "# Liger mirrors showed a forward peak in the widest adapter; it first measured -5.2%, then -4.9% with",
                "# the adapter's fp32 copies, and -0.7% once its bf16 input and the base layer's output were counted.",
                "# Differences from a GPU run: see bench/memory_validation.py's docstring."]),
             f"{'case':<52} {'measured MiB':>12} {'estimate MiB':>12} {'error':>8}  {'estimated peak at':<22} "
             f"{'secs':>5}"]
    print("\n".join(lines), flush=True)
    errors = []
    for case in [c for c in (saver_cases() if args.savers else matrix(args.quick)) if args.match in c.name]:
        start = time.time()
        measured, predicted, phase = compare(case)
        error = (predicted - measured) / measured
        errors.append(abs(error))
        line = (f"{case.name:<52} {measured / 2**20:>12.0f} {predicted / 2**20:>12.0f} {error:>+8.1%}  {phase:<22} "
                f"{time.time() - start:>5.1f}")
        lines.append(line)
        print(line, flush=True)
    if errors:
        summary = (f"# {len(errors)} cases: median |error| {statistics.median(errors):.1%}, "
                   f"worst |error| {max(errors):.1%}")
        lines.append(summary)
        print(summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
