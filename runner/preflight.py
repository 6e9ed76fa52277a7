"""Checks made before a launch, so a run that cannot start fails in seconds with our words rather
than minutes later inside a rank with a library's traceback.

- Packages a plan needs beyond the base install: bitsandbytes for QLoRA and 8-bit AdamW,
  lomo-optim for AdaLomo, galore-torch for GaLore, apollo-torch for APOLLO.
- The model's weights: a catalog or hub model must be in the local Hugging Face cache, or the hub
  must be reachable to fetch it. Without either, the ranks would each fail in `from_pretrained`
  after the whole stack started.
- Every plan.yaml key against this machine, the model and the data (`check_plan`), for
  `llmwizard run DIR` and `resume DIR`: Plan.load checks each value and the relations between
  values; what needs the GPUs, the installed packages, the model's config or the dataset's rows is
  checked here, before the run directory changes. A key the run cannot carry out is refused by
  name, with the planner's own words where the same choice given as a flag is refused, so a plan
  file is held to the rules of the flags that set it and what launches is what plan.yaml says.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmwizard.autotune.errors import UserError

if TYPE_CHECKING:
    from llmwizard.autotune.model.model_types import ModelSpec
    from llmwizard.autotune.plan import Plan

# Any of these in a snapshot means the weights are there (sharded checkpoints have the index).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
HUB_TIMEOUT_S = 10.0


def check_packages(method: str, optimizer: str) -> None:
    """Raise UserError (exit code 2) when the plan needs a package that is not installed."""
    low_rank = {"galore_adamw": ("GaLore", "galore-torch", "galore_torch"),
                "apollo_adamw": ("APOLLO", "apollo-torch", "apollo_torch")}.get(optimizer)
    if low_rank and (importlib.util.find_spec(low_rank[2]) is None or importlib.util.find_spec("bitsandbytes") is None):
        name, package, _ = low_rank
        raise UserError(f"{name} (--optimizer {optimizer}) needs the {package} package, and bitsandbytes, which "
                        f"{package} imports; one of them is not installed.", title="Missing package",
                        fix=f"Install them (pip install {package} bitsandbytes, which llmwizard's lowmem extra also "
                            "installs), or plan without it: --optimizer adafactor.")
    if optimizer == "adalomo" and importlib.util.find_spec("lomo_optim") is None:
        raise UserError("AdaLomo (--optimizer adalomo) needs the lomo-optim package, which is not installed.",
                        title="Missing package",
                        fix="Install it (pip install lomo-optim, which llmwizard's lowmem extra also installs; NVIDIA "
                            "GPUs only), or plan without it: --optimizer adafactor.")

    needs = [what for what, used in (("QLoRA (--method qlora)", method == "qlora"),
                                     ("8-bit AdamW (--optimizer adamw_8bit)", optimizer == "adamw_8bit")) if used]
    if needs and importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"{' and '.join(needs)} needs bitsandbytes, which is not installed.", title="Missing package",
                        fix="Install it on every machine of the run (pip install bitsandbytes, which llmwizard's gpu "
                            "extra also installs; NVIDIA GPUs only), or plan without it: --method lora / --optimizer "
                            "adamw.")


def check_model_weights(model: str, source: str) -> str | None:
    """Raise UserError when `model`'s weights cannot be had; else a note on where they come from
    (None for local and embedded models, which need no check here)."""
    if source not in ("catalog", "hub"):
        return None
    if _cached(model):
        return f"{model}: weights found in the local Hugging Face cache"
    local_fix = ("or pass a local directory that holds config.json and the weights: "
                 f"--model /path/to/{model.split('/')[-1]}")
    download = f"hf download {model}"
    if _offline():
        raise UserError(f"The weights of {model} are not on this machine, and the hub is switched off "
                        "(HF_HUB_OFFLINE is set).", title="Model weights",
                        fix=f"Download them first ({download}) where the hub is reachable, {local_fix}.")
    problem = _hub_problem(model)
    if problem is None:
        return f"{model}: not cached yet; each machine downloads it from the hub before training"
    raise UserError(f"The weights of {model} are not on this machine, and {problem}.", title="Model weights",
                    fix=f"Download them ({download}, after `hf auth login` for a gated model), {local_fix}.")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cached(model: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for name in WEIGHT_FILES:
        try:
            found = try_to_load_from_cache(model, name)
        except Exception:  # noqa: BLE001 (an odd id or cache layout: treat as not cached)
            return False
        if isinstance(found, str) and Path(found).is_file():
            return True
    return False


def _hub_problem(model: str) -> str | None:
    """Why the hub cannot provide `model` (None when it can)."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(model, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return "the hub says it is gated: its licence must be accepted and a token given"
    except RepositoryNotFoundError:
        return "the hub has no such model (or it is private)"
    except Exception as exc:  # noqa: BLE001 (no network, DNS, proxy: all mean "cannot fetch")
        return f"the hub cannot be reached ({type(exc).__name__})"
    return None


# ----------------------------------------------------------------------------- plan.yaml on this machine

def check_plan(plan: Plan, plan_file: Path) -> None:
    """Refuse (UserError, exit code 2) the first plan.yaml key that this machine, the model or the
    data cannot carry out, naming the key, its value and the fix. Reads only: a refusal leaves the
    run directory as it was. The order goes from the machine to the data, so a GPU-only choice on
    the CPU is called that rather than a missing GPU package."""
    where = str(plan_file)
    check_device(plan, where)
    check_flag_rules(plan, where)
    check_plan_packages(plan, where)
    model = check_model_keys(plan, where)
    check_data_keys(plan, where)
    if model is not None:
        from llmwizard.autotune.memory.long_context import check_plan_split

        if plan.strategy in ("zero2", "zero3"):
            check_plan_split(model, plan.strategy, plan.context_parallel, plan.num_processes, where)


def refusal(where: str, key: str, value: Any, why: str, fix: str, title: str = "Plan") -> UserError:
    """The one shape of a plan.yaml key refused here: `FILE: key = value: why`, as Plan.load says
    a value the schema refuses."""
    return UserError(f"{where}: {key} = {shown(value)}: {why}", title=title, fix=fix)


def shown(value: Any) -> str:
    """A value as plan.yaml spells it (true, [q_proj, v_proj])."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(item) for item in value) + "]"
    return str(value)


def check_device(plan: Plan, where: str) -> None:
    """`device: cuda` needs GPUs here, one per process of this machine; on the CPU the choices that
    need a GPU are refused with the planner's own refusal of the same flag."""
    if plan.device == "cuda":
        from llmwizard.autotune.machine.nvml import read_nvml

        gpus, _, notes = read_nvml(os.environ)
        if not gpus:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            seen = (f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else
                    notes[0].split(": planning")[0] if notes else "NVML lists none")
            raise refusal(where, "device", "cuda", f"this machine has no GPU that CUDA can use ({seen}); the ranks "
                          "would train on the CPU instead of the GPUs the plan was sized for.",
                          "Run it on the machine it was planned for, or export a plan for this machine "
                          "(llmwizard export --out DIR), which plans for the CPU here.", title="Device")
        if plan.processes_per_machine > len(gpus):
            raise refusal(where, "num_processes", plan.num_processes,
                          f"{plan.processes_per_machine} process(es) per machine, but this machine has {len(gpus)} "
                          "GPU(s): two processes on one GPU fail with 'Duplicate GPU detected'.",
                          f"Set num_processes to {len(gpus) * plan.num_machines} or fewer (with micro_batch, "
                          "grad_accum and effective_batch to match), or export the plan again here.", title="Processes")
        from llmwizard.autotune.plan import plan_steps
        from llmwizard.autotune.goals import Goals
        from llmwizard.autotune.machine.hardware_types import HardwareProfile

        try:  # the rule of --precision: bf16 needs compute capability 8.0
            plan_steps.precision(HardwareProfile(source="detected", gpus=gpus), Goals(precision=plan.precision))
        except UserError as error:
            raise refusal(where, "precision", plan.precision, error.message,
                          f"Set precision: fp16 in {where}.", title=error.title) from None
        return
    for key, value, off, refuse in _gpu_only_choices(plan):
        try:
            refuse()
        except UserError as error:
            raise refusal(where, key, value, error.message,
                          f"Set {key}: {off} in {where} (device is cpu), or export a plan for a GPU machine "
                          "(llmwizard export --gpus ... --out DIR).", title=error.title) from None


def _gpu_only_choices(plan: Plan) -> list[tuple[str, Any, str, Callable[[], object]]]:
    """(key, value, the CPU's value, the planner's check of it for a machine without a GPU): the
    same checks refuse --method qlora, --offload, --activation-offloading and --liger-kernel."""
    from llmwizard.autotune.plan import plan_steps
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.machine.hardware_types import HardwareProfile
    from llmwizard.autotune.plan.search import check_choices

    cpu = HardwareProfile(source="detected", gpus=[])
    checks: list[tuple[str, Any, str, Callable[[], object]]] = [
        ("method", plan.method, "lora", lambda: plan_steps.method(cpu, Goals(method=plan.method))),
        ("offload", plan.offload, "none",
         lambda: check_choices(Goals(offload=plan.offload), plan.num_processes, "cpu", plan.method)),
        ("activation_offloading", plan.activation_offloading, "false",
         lambda: plan_steps.activation_offloading(cpu, Goals(activation_offloading=plan.activation_offloading))),
        ("liger_kernel", plan.liger_kernel, "false",
         lambda: plan_steps.liger(cpu, Goals(liger_kernel=plan.liger_kernel), None)),  # type: ignore[arg-type]
        ("attention", plan.attention, "sdpa", lambda: _no_flash_on_cpu(plan.attention)),
        ("context_parallel", plan.context_parallel, "1", lambda: _no_context_parallel_on_cpu(plan)),
    ]
    return checks


def _no_flash_on_cpu(attention: str) -> None:
    if attention == "flash":
        raise UserError("FlashAttention-2 (flash_attention_2) is a CUDA kernel; this plan has no GPU.",
                        title="Attention")


def _no_context_parallel_on_cpu(plan: Plan) -> None:
    """The planner's words for --context-parallel with FSDP2 on the CPU (Ulysses under ZeRO runs there)."""
    if plan.context_parallel > 1 and plan.strategy == "fsdp":
        raise UserError(f"Context parallelism over {plan.context_parallel} GPUs needs GPUs with FSDP2: torch's "
                        "context parallelism shards only the CUDA attention kernels (on the CPU, DeepSpeed's Ulysses "
                        "splits sequences: strategy zero2 or zero3 over two or more processes).",
                        title="Context parallelism")


# The planner's refusals by title, and the plan.yaml key each is about.
_KEY_OF_TITLE = {"Strategy": "strategy", "Offload": "offload", "Optimizer": "optimizer", "Launcher": "launcher"}
# Flags in the planner's fixes, said as plan.yaml keys.
_KEY_OF_FLAG = {"--processes": "num_processes", "--gpus": "llmwizard export --gpus"}


def in_plan_words(text: str) -> str:
    """A planner fix with its flags said as plan.yaml keys: `--strategy zero3` -> `strategy zero3`."""
    import re

    text = re.sub(r"--no-([a-z][a-z-]*)", lambda m: f"{m.group(1).replace('-', '_')}: false", text)
    return re.sub(r"--[a-z][a-z-]*", lambda m: _KEY_OF_FLAG.get(m.group(0), m.group(0)[2:].replace("-", "_")), text)


def check_flag_rules(plan: Plan, where: str) -> None:
    """The rules that refuse --strategy, --offload, --optimizer and --launcher together, applied to
    the plan's keys: a hand edit the planner would never make (ddp on one process, the deepspeed
    launcher without ZeRO) would otherwise launch as something else than plan.yaml says."""
    from llmwizard.autotune.plan import plan_steps
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.plan.search import check_choices

    try:
        check_choices(Goals(strategy=plan.strategy, offload=plan.offload, optimizer=plan.optimizer),
                      plan.num_processes, plan.device, plan.method)
        plan_steps.launcher(Goals(launcher=plan.launcher), plan.strategy)
    except UserError as error:
        key = _KEY_OF_TITLE.get(error.title, "strategy")
        raise refusal(where, key, getattr(plan, key), error.message,
                      f"{in_plan_words(error.fix or '')} Edit {where} to match, or export the plan again "
                      "(llmwizard export --out DIR).", title=error.title) from None
    if plan.hybrid_shard and not (plan.strategy == "fsdp" and plan.num_machines > 1
                                  and plan.processes_per_machine > 1):
        raise refusal(where, "hybrid_shard", True, "hybrid sharding (HSDP) shards inside each machine and "
                      "replicates across machines: it needs strategy fsdp over two or more machines with two or "
                      f"more processes each (this plan: strategy {plan.strategy}, {plan.num_machines} machine(s), "
                      f"{plan.processes_per_machine} process(es) each).",
                      f"Set hybrid_shard: false in {where}.", title="Strategy")


# What a plan key needs installed: (key, value, module, pip name, what it is for, the value without it).
def _needed_packages(plan: Plan) -> list[tuple[str, Any, str, str, str, str]]:
    from llmwizard.autotune.plan.plan_steps import TRACKER_SETUP
    from llmwizard.autotune.memory.savers import TORCHAO_OPTIMIZERS

    needs: list[tuple[str, Any, str, str, str, str]] = []
    if plan.method == "qlora":
        needs.append(("method", "qlora", "bitsandbytes", "bitsandbytes", "QLoRA's 4-bit base", "lora"))
    optimizer_packages = {"adamw_8bit": [("bitsandbytes", "bitsandbytes")],
                          "galore_adamw": [("galore_torch", "galore-torch"), ("bitsandbytes", "bitsandbytes")],
                          "apollo_adamw": [("apollo_torch", "apollo-torch"), ("bitsandbytes", "bitsandbytes")],
                          "adalomo": [("lomo_optim", "lomo-optim")],
                          **{name: [("torchao", "torchao")] for name in TORCHAO_OPTIMIZERS}}
    for module, package in optimizer_packages.get(plan.optimizer, []):
        needs.append(("optimizer", plan.optimizer, module, package, f"the {plan.optimizer} optimizer", "adamw"))
    if plan.strategy in ("zero2", "zero3") or plan.launcher == "deepspeed":
        key, value = ("strategy", plan.strategy) if plan.strategy in ("zero2", "zero3") else ("launcher", "deepspeed")
        needs.append((key, value, "deepspeed", "deepspeed", "DeepSpeed's ZeRO", "ddp" if key == "strategy"
                      else "accelerate"))
    if plan.liger_kernel:
        needs.append(("liger_kernel", True, "liger_kernel", "liger-kernel", "Liger's Triton kernels", "false"))
    if plan.attention == "flash":
        needs.append(("attention", "flash", "flash_attn", "flash-attn", "FlashAttention-2", "sdpa"))
    for tracker in plan.report_to:
        module = TRACKER_SETUP[tracker][0]
        needs.append(("report_to", list(plan.report_to), module, module, f"reporting to {tracker}", "[]"))
    return needs


def check_plan_packages(plan: Plan, where: str) -> None:
    """Each package a key needs must be installed here, or every rank stops at its first import."""
    for key, value, module, package, what, without in _needed_packages(plan):
        if importlib.util.find_spec(module) is None:
            raise refusal(where, key, value, f"{what} needs the {package} package, which is not installed here.",
                          f"Install it on every machine of the run (pip install {package}), or set {key}: {without} "
                          f"in {where}.", title="Missing package")


def check_model_keys(plan: Plan, where: str) -> ModelSpec | None:
    """The keys that name parts of the model, against the model's own config: its source, its
    positions, its block classes, its linear layers and its vision tower. The same rules refuse
    --max-length and --lora-targets. None (nothing checked) for a hub model whose config cannot be
    had here; check_model_weights refuses that run when it launches."""
    from llmwizard.autotune.memory import vision
    from llmwizard.autotune.model.model_spec import load_model_spec

    try:
        model = load_model_spec(plan.model, trust_remote_code=plan.trust_remote_code)
    except UserError as error:
        if plan.model_source == "hub":
            return None
        raise refusal(where, "model", plan.model, error.message, error.fix or "Restore the model's name or path.",
                      title="Model") from None
    if model.source != plan.model_source:
        raise refusal(where, "model_source", plan.model_source, f"{plan.model} resolves to a model of source "
                      f"{model.source} here, and the run loads it as that.",
                      f"Set model_source: {model.source} in {where}.", title="Model")
    if plan.max_length > model.max_positions:
        raise refusal(where, "max_length", plan.max_length, f"Max length {plan.max_length} is longer than "
                      f"{model.name} allows ({model.max_positions} positions).",
                      f"Set max_length to {model.max_positions} or less in {where}.", title="Max length")
    blocks = model.wrap_classes or [model.layer_cls]
    unknown = [name for name in (part.strip() for part in plan.layer_cls.split(",")) if name not in blocks]
    if unknown:
        verb = "is" if len(unknown) == 1 else "are"
        raise refusal(where, "layer_cls", plan.layer_cls, f"{', '.join(unknown)} {verb} not a block class of "
                      f"{model.name}: FSDP would find nothing to wrap by that name.",
                      f"Set layer_cls: {','.join(blocks)} in {where}.", title="Model")
    tower = bool(model.vision) and (plan.method == "full" or plan.train_vision_tower)
    if plan.train_vision_tower != tower:
        why = (f"{model.name} has no vision tower." if not model.vision else
               "full fine-tuning trains every weight, the vision tower's too.")
        raise refusal(where, "train_vision_tower", plan.train_vision_tower, why,
                      f"Set train_vision_tower: {shown(tower)} in {where}.", title="Vision tower")
    if plan.lora is not None:
        check_lora_targets(plan, model, vision.lora_targets, where)
    return model


def check_lora_targets(plan: Plan, model: ModelSpec, derive: Callable[..., list[str]], where: str) -> None:
    """lora.target_modules must be linear layers of the model (the rule of --lora-targets), and
    lora.peft_targets, what PEFT receives, must be what they give: PEFT adapts peft_targets, so an
    edit of either alone would train other layers than the plan says (or none, and fail)."""
    assert plan.lora is not None
    targets = plan.lora.target_modules
    unknown = [name for name in targets if name not in model.linear_names]
    if unknown or not targets:
        why = (f"LoRA targets {', '.join(unknown)} are not linear layers of {model.name}." if unknown
               else "LoRA needs at least one layer to adapt.")
        raise refusal(where, "lora.target_modules", targets, why,
                      f"Choose from: {', '.join(model.linear_names)} (lora.target_modules in {where}).", title="LoRA")
    derived = derive(model, list(targets), bool(model.vision) and plan.train_vision_tower)
    if plan.lora.peft_targets and list(plan.lora.peft_targets) != derived:
        raise refusal(where, "lora.peft_targets", plan.lora.peft_targets,
                      f"not what lora.target_modules {shown(targets)} give for {model.name} ({shown(derived)}); PEFT "
                      "adapts peft_targets, so the run would train other layers than the plan says.",
                      f"Set lora.peft_targets to {shown(derived)} (or remove it) and choose the layers in "
                      f"lora.target_modules.", title="LoRA")
    # Mixture-of-Experts: only the model's fused expert weights, and no dropout (PEFT's ParamWrapper).
    experts = list(model.moe.expert_parameters) if model.moe else []
    if plan.lora.target_parameters and sorted(plan.lora.target_parameters) != sorted(experts):
        raise refusal(where, "lora.target_parameters", plan.lora.target_parameters,
                      f"not the routed experts' fused weights of {model.name} "
                      f"({shown(experts) if experts else 'none'})",
                      f"Set lora.target_parameters to {shown(experts)} or []." if experts
                      else "Set lora.target_parameters to [].", title="LoRA")
    if plan.lora.target_parameters and plan.lora.dropout:
        raise refusal(where, "lora.dropout", plan.lora.dropout, "PEFT adapts the experts' fused weights through its "
                      "ParamWrapper, which takes no dropout", "Set lora.dropout: 0, or lora.target_parameters: [].",
                      title="LoRA")


def check_data_keys(plan: Plan, where: str) -> None:
    """The dataset must be readable here and hold rows of `dataset_format`: the ranks map the rows by
    what they hold, so a format the data does not have would be ignored. A hub dataset's rows are
    fetched by the ranks and not checked here."""
    from llmwizard.autotune.data.dataset import detect_format, load_rows, local_path, resolve_dataset

    try:
        source = resolve_dataset(plan.dataset, task=plan.task)
        if local_path(source) is None:
            return
        rows = load_rows(source)
        found, _ = detect_format(rows[0].keys(), task=plan.task)
    except UserError as error:
        raise refusal(where, "dataset", plan.dataset, error.message, error.fix or "Restore the dataset's path.",
                      title="Dataset") from None
    if found != plan.dataset_format:
        raise refusal(where, "dataset_format", plan.dataset_format, f"{plan.dataset} holds {found} rows "
                      f"(columns {', '.join(sorted(rows[0]))}); the ranks train on them as {found}.",
                      f"Set dataset_format: {found} in {where}, or point dataset at data of that format.",
                      title="Dataset")
