"""Small patches of library internals the training entry needs, each applied through a guard.

Every patch reaches into something a library does not promise to keep (accelerate's
AcceleratorState.__init__ and PartialState._shared_state, DeepSpeed's op-compatibility table,
PEFT's private `_get_tuner_state_dict_key_prefixes`). `internal()` checks the thing is there
before it is touched; when an upgrade removed it, the rank stops with a message that names the
library, its installed version and what llmwizard needed, instead of training wrongly in silence.
tests/test_patches.py asserts every guarded internal exists in the installed versions, so an
upgrade fails loudly in CI first. `GUARDED` lists them for that test.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any


class LibraryChanged(RuntimeError):
    """A guarded internal is missing from the installed library."""

    def __init__(self, library: str, internal: str, needed_for: str) -> None:
        self.library, self.internal, self.needed_for = library, internal, needed_for
        self.message = (f"{library} {installed_version(library)} has no {internal}, which llmwizard needs to "
                        f"{needed_for}.")
        self.fix = (f"Install the {library} version llmwizard was tested with (the range in llmwizard's "
                    f"pyproject.toml), or report {library} {installed_version(library)} to llmwizard.")
        super().__init__(f"{self.message} Fix: {self.fix}")


def installed_version(library: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(library)
    except PackageNotFoundError:
        return "(not installed)"


def internal(library: str, owner: Any, name: str, needed_for: str, *, parameter: str | None = None) -> Any:
    """`owner.name`, checked: LibraryChanged when it is gone (or takes no `parameter`)."""
    label = f"{getattr(owner, '__name__', type(owner).__name__)}.{name}"
    found = getattr(owner, name, None)
    if found is None:
        raise LibraryChanged(library, label, needed_for)
    if parameter is not None:
        try:
            takes = parameter in inspect.signature(found).parameters
        except (TypeError, ValueError):
            takes = False
        if not takes:
            raise LibraryChanged(library, f"a '{parameter}' parameter on {label}", needed_for)
    return found


# ----------------------------------------------------------------------------- accelerate

FSDP_ON_CPU = "run FSDP on CPU ranks (without it a CPU run trains as plain DDP, silently)"


def accelerate_internals() -> dict[str, Any]:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    return {
        "init": internal("accelerate", AcceleratorState, "__init__", FSDP_ON_CPU, parameter="fsdp_plugin"),
        "shared_state": internal("accelerate", PartialState, "_shared_state", FSDP_ON_CPU),
        "multi_cpu": internal("accelerate", DistributedType, "MULTI_CPU", FSDP_ON_CPU),
        "fsdp": internal("accelerate", DistributedType, "FSDP", FSDP_ON_CPU),
    }


def allow_fsdp_on_cpu() -> None:
    """Let FSDP2 run on CPU ranks (gloo) as it does on GPUs.

    accelerate 1.15's AcceleratorState turns FSDP on only for GPU-family distributed types; a CPU
    run (MULTI_CPU) keeps its FSDP plugin unused and trains as plain DDP, silently. torch's
    fully_shard itself runs on CPU with gloo, so when an FSDP plugin was given and the state came
    out MULTI_CPU, the state is promoted to FSDP. Nothing changes on GPUs.
    """
    from accelerate.state import AcceleratorState

    if getattr(AcceleratorState.__init__, "_llmwizard", False):
        return
    found = accelerate_internals()
    original, shared, multi_cpu, fsdp = found["init"], found["shared_state"], found["multi_cpu"], found["fsdp"]

    def init(self: Any, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == multi_cpu:
            self.distributed_type = fsdp
            self.fsdp_plugin = fsdp_plugin
            # As AcceleratorState.__init__ does last: later bare AcceleratorState() calls copy it back.
            shared["distributed_type"] = fsdp
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)

    init._llmwizard = True  # type: ignore[attr-defined]
    AcceleratorState.__init__ = init  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- DeepSpeed

SKIP_SHM_KERNEL = "skip building its shared-memory all-reduce kernel, which training never calls"


def deepspeed_op_table() -> dict[str, bool]:
    import deepspeed.ops

    table = internal("deepspeed", deepspeed.ops, "__compatible_ops__", SKIP_SHM_KERNEL)
    if not isinstance(table, dict):
        raise LibraryChanged("deepspeed", "deepspeed.ops.__compatible_ops__ as a dict", SKIP_SHM_KERNEL)
    return table


def deepspeed_skips_its_shm_kernel() -> None:
    """Keep DeepSpeed from compiling its shared-memory all-reduce kernel when it sets up comms.

    On a CPU rank, deepspeed.comm JIT-builds `deepspeed_shm_comm` (a C++ extension, via ninja)
    the first time it starts. Training never calls that kernel: it serves
    `inference_all_reduce` only, and falls back to torch.distributed without it. The build
    costs tens of seconds on a fresh machine and needs a C++ toolchain, and a rank killed
    mid-build leaves torch's build lock behind, on which every later DeepSpeed run waits
    forever. DeepSpeed keeps its op-compatibility table as one mutable dict for this purpose;
    an op marked incompatible there is never built. Without the table the run still trains
    (slower to start), so a missing table is a warning, not a stop.
    """
    try:
        table = deepspeed_op_table()
    except LibraryChanged as error:
        print(f"llmwizard: warning: {error}", file=sys.stderr, flush=True)
        return
    table["deepspeed_shm_comm"] = False


def dequantized_for_training(path: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """from_pretrained's `quantization_config` for a model released quantized in a format that does
    not train: gpt-oss's MXFP4 experts load dequantized to bf16 (transformers' Mxfp4Config), which
    is what llmwizard's memory model and host-RAM check count. Nothing for other models, or when the
    caller already chose a quantization (QLoRA)."""
    if "quantization_config" in kwargs:
        return {}
    from transformers import PretrainedConfig

    try:
        settings, _ = PretrainedConfig.get_config_dict(path, revision=kwargs.get("revision"))
    except (OSError, ValueError):
        return {}  # from_pretrained says what is wrong with the model
    method = (settings.get("quantization_config") or {}).get("quant_method")
    if method != "mxfp4":
        return {}
    from transformers import Mxfp4Config

    return {"quantization_config": Mxfp4Config(dequantize=True)}


MOE_LEAVES = "gather each Mixture-of-Experts block whole under ZeRO-3 (without it the ranks hang gathering experts)"


def deepspeed_leaf_setter() -> Any:
    import deepspeed.utils

    return internal("deepspeed", deepspeed.utils, "set_z3_leaf_modules", MOE_LEAVES)


def moe_blocks_are_zero3_leaves(model: Any) -> list[str]:
    """Mark the model's Mixture-of-Experts blocks as ZeRO-3 leaf modules, before DeepSpeed starts.

    ZeRO-3 gathers a module's parameters as its forward reaches them. A MoE block reaches only the
    experts its router picked, and picks differ between ranks, so ranks wait on gathers the others
    never start: training hangs. As a leaf, the block (router and every expert) is gathered whole.
    The blocks are found as llmwizard.autotune.model.param_counts finds them when counting: the module
    that holds `experts` (Qwen3MoeSparseMoeBlock, MixtralSparseMoeBlock, GptOssMLP, a remote
    model's own). Returns the class names marked (none for a dense model).
    """
    import torch

    classes = {type(module) for module in model.modules()
               if isinstance(getattr(module, "experts", None), torch.nn.Module)}
    if not classes:
        return []
    ordered = sorted(classes, key=lambda cls: cls.__name__)
    deepspeed_leaf_setter()(model, ordered)
    names = [cls.__name__ for cls in ordered]
    print(f"llmwizard: ZeRO-3 leaf modules: {', '.join(names)}", file=sys.stderr, flush=True)
    return names


# ----------------------------------------------------------------------------- PEFT

ADAPTER_UNDER_CHECKPOINTING = ("keep LoRA weights in adapters saved under FSDP activation checkpointing "
                               "(without it the saved adapter is empty)")


def peft_prefix_function() -> Any:
    from peft.tuners import tuners_utils

    return internal("peft", tuners_utils, "_get_tuner_state_dict_key_prefixes", ADAPTER_UNDER_CHECKPOINTING,
                    parameter="adapter_name")


def peft_sees_through_checkpoint_wrappers() -> None:
    """Keep LoRA weights in adapters saved under FSDP activation checkpointing.

    PEFT 0.21 picks the adapter's entries out of a state dict by module name, and strips FSDP1's
    `_fsdp_wrapped_module.` from those names but not `_checkpoint_wrapped_module.`, which FSDP's
    activation checkpointing puts inside every decoder layer. State dicts carry no such segment
    (torch's checkpoint wrapper removes it), so nothing matched and the saved adapter (final
    and checkpoints) was empty. Strip the segment the same way.
    """
    from peft.tuners import tuners_utils

    original = peft_prefix_function()
    if getattr(original, "_llmwizard", False):
        return

    def prefixes(model: Any, adapter_name: str | None = None) -> set[str]:
        return {prefix.replace("_checkpoint_wrapped_module.", "") for prefix in original(model, adapter_name)}

    prefixes._llmwizard = True  # type: ignore[attr-defined]
    tuners_utils._get_tuner_state_dict_key_prefixes = prefixes


# ----------------------------------------------------------------------------- lomo-optim

ADALOMO_MOMENTS = ("save AdaLomo's second moments with each checkpoint and restore them on resume (they live "
                   "outside torch's optimizer state)")
# The attributes AdaLomo keeps its state in, keyed by parameter name, and its step count.
_ADALOMO_STATE = ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col", "step_num")


def adalomo_class() -> Any:
    from lomo_optim import AdaLomo

    init = internal("lomo-optim", AdaLomo, "__init__", ADALOMO_MOMENTS)
    source = inspect.getsource(init)
    for name in _ADALOMO_STATE:
        if f"self.{name} =" not in source:
            raise LibraryChanged("lomo-optim", f"AdaLomo.{name}", ADALOMO_MOMENTS)
    return AdaLomo


def adalomo_keeps_its_moments() -> None:
    """Make AdaLomo's state_dict carry its state, so the Trainer's optimizer.pt holds it.

    lomo-optim keeps the factored second moments in dicts on the optimizer, not in torch's
    `Optimizer.state`, so the state_dict the Trainer saves is empty and a resumed run started
    them again from zero (and its step count, which sets their decay). Add them under one key
    and copy them back on load.
    """
    cls = adalomo_class()
    if getattr(cls, "_llmwizard_moments", False):
        return
    base_state, base_load = cls.state_dict, cls.load_state_dict

    def state_dict(self: Any) -> dict[str, Any]:
        state = base_state(self)
        state["adalomo"] = {name: getattr(self, name) for name in _ADALOMO_STATE}
        return state

    def load_state_dict(self: Any, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("adalomo", None)
        base_load(self, state_dict)
        if saved is None:
            return
        for name in _ADALOMO_STATE[:3]:
            mine = getattr(self, name)
            for key, tensor in saved[name].items():
                mine[key].copy_(tensor)
        self.step_num = int(saved["step_num"])

    cls.state_dict, cls.load_state_dict = state_dict, load_state_dict
    cls._llmwizard_moments = True


# Each guarded internal, by name: a function that returns it or raises LibraryChanged.
GUARDED = {
    "accelerate AcceleratorState.__init__(fsdp_plugin=...), PartialState._shared_state": accelerate_internals,
    "deepspeed deepspeed.ops.__compatible_ops__": deepspeed_op_table,
    "deepspeed deepspeed.utils.set_z3_leaf_modules": deepspeed_leaf_setter,
    "peft tuners_utils._get_tuner_state_dict_key_prefixes": peft_prefix_function,
    "lomo-optim AdaLomo.exp_avg_sq, exp_avg_sq_row, exp_avg_sq_col, step_num": adalomo_class,
}
