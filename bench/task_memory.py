"""Check the task terms of llmwizard.autotune.memory against peaks measured with TRL's real trainers on the CPU.

Each case trains a tiny Llama (real widths small enough for this CPU, built here, saved to a
temporary directory with a word-level tokenizer so every prompt and response has an exact token
count) with TRL 1.16's own DPOTrainer, KTOTrainer, GRPOTrainer or the experimental ORPOTrainer,
for two optimizer steps, and records the live tensor bytes at every op: a TorchDispatchMode sees
each op's outputs and follows each storage until it is freed (`LiveBytes`). The weights (and the
reference copy) exist before training starts and are registered first. The phase of the step is
known from where the trainer is: its compute_loss, the reference model's forward (or
`use_adapter`, which disables the adapter), KTO's `_compute_kl_logps`, GRPO's `generate` and
`_get_per_token_logps_and_entropies`, `accelerator.backward`, the optimizer's step hooks; the
precompute pass is measured on one batch of TRL's own `compute_ref_log_probs` right after the
trainer is built (what `precompute_ref_log_probs` runs in `__init__`). `estimate()` is asked about
the same model and setup (device "cpu": TRL's fused LM head folds its tiles with torch ops), and
each measured phase is compared with the estimate's phases that fall in it.

What differs from a GPU run: the CPU scores every position in the fused head (a GPU only the
completion tokens), attention runs torch's CPU SDPA kernel, autocast is CPU autocast (bf16), and
vLLM cannot run here (its share is a stated term, not measured). The GRPO cases generate without
an end token (`eos_token_id=None`), so every completion is max_completion_length long.

Run: python bench/task_memory.py [--match TEXT] [--out bench/results/task_memory-cpu.txt]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmwizard.autotune.memory import MemoryEstimate, TrainSetup, estimate  # noqa: E402
from llmwizard.autotune.model.model_spec import spec_from_config  # noqa: E402

# A real Llama block at small widths: GQA (4 query heads over 2 KV heads), untied embedding and
# head. The vocabulary is large enough that the LM head's tiles are of the layers' order, small
# enough that a reference copy is not only embeddings.
MODELS: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(model_type="llama", vocab_size=4096, hidden_size=256, intermediate_size=1024,
                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                       max_position_embeddings=2048, tie_word_embeddings=False, rope_theta=10000.0),
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PAD, EOS, UNK = 0, 1, 2
MiB = 2**20
# The measured phases, and the estimate's phases that fall in each.
PHASES: dict[str, tuple[str, ...]] = {
    "precompute": ("reference precompute (before training)",),
    "generation": ("generation (prefill)", "generation (last token)"),
    "reference pass": ("reference pass",),
    "KL pass": ("KL pass (policy, no grad)",),
    "policy forward": ("forward (last layer)", "forward (LM head)"),
    "reference forward": ("reference forward",),
    "backward": ("backward (LM head)", "backward (last layer)", "backward (first layer)", "backward (embedding)"),
    "optimizer step": ("optimizer step",),
}


@dataclass(frozen=True)
class Case:
    task: str                 # dpo, orpo, kto, grpo
    method: str               # full or lora
    reference: str            # copy, adapter, precompute or none
    batch: int                # micro-batch: pairs (dpo, orpo), rows (kto), completions (grpo)
    prompt: int               # prompt tokens
    completion: int           # tokens of each response (chosen, rejected, completion), the end token included
    precision: str = "bf16"   # bf16: fp32 weights under bf16 autocast (full), a bf16 base (LoRA); or fp32
    checkpointing: bool = False
    steps_per_generation: int = 1  # GRPO: gradient_accumulation_steps
    generations: int = 2      # GRPO: completions per prompt
    model: str = "tiny-llama"

    @property
    def name(self) -> str:
        parts = [self.task, self.method, self.reference, f"b{self.batch}", f"p{self.prompt}+{self.completion}"]
        parts += [f"g{self.generations}x{self.steps_per_generation}"] if self.task == "grpo" else []
        parts += [self.precision] if self.precision != "bf16" else []
        parts += ["ckpt"] if self.checkpointing else []
        return " ".join(parts)


def cases() -> list[Case]:
    """Every task with each reference it allows, full and LoRA, at shapes where the task's own
    terms are a visible share of the peak."""
    return [
        Case("dpo", "full", "copy", 2, 64, 192),
        Case("dpo", "full", "precompute", 2, 64, 192),
        Case("dpo", "lora", "adapter", 2, 64, 192),
        Case("dpo", "lora", "precompute", 2, 64, 192),
        Case("dpo", "full", "copy", 1, 128, 384, precision="fp32"),
        Case("orpo", "full", "none", 2, 64, 192),
        Case("orpo", "lora", "none", 2, 64, 192),
        Case("kto", "full", "copy", 2, 64, 192),
        Case("kto", "lora", "adapter", 4, 64, 192),
        Case("kto", "full", "precompute", 2, 64, 192),
        Case("grpo", "full", "none", 4, 64, 96, steps_per_generation=2),
        Case("grpo", "full", "copy", 4, 64, 96),
        Case("grpo", "lora", "adapter", 4, 64, 96, steps_per_generation=2),
        # 64 sequences generated at once (4 completions x 16 accumulation steps): the KV cache is
        # a large share of the generation phase
        Case("grpo", "lora", "none", 4, 64, 192, precision="fp32", steps_per_generation=16, generations=4),
    ]


# ----------------------------------------------------------------------------- measuring


class LiveBytes:
    """Live tensor bytes, op by op: each op's output storages are counted once until freed.

    A TorchDispatchMode sees every op (autograd's backward ops too); a storage is keyed by its
    C++ address and dropped by a weak reference's callback (torch keeps one Python object per
    live storage). `phase` names where the trainer is; `peaks` keeps the largest total seen in
    each phase."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                out = func(*args, **(kwargs or {}))
                for tensor in tree_flatten(out)[0]:
                    tracker.add(tensor)
                return out

        self.mode = Mode()
        self.live: dict[int, tuple[Any, int]] = {}
        self.current = 0
        self.phase = "setup"
        self.peaks: dict[str, int] = {}

    def add(self, tensor: Any) -> None:
        import torch

        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key, size = storage._cdata, storage.nbytes()
        if key in self.live:
            ref, old = self.live[key]
            if old != size:  # resized in place
                self.current += size - old
                self.live[key] = (ref, size)
        else:
            def freed(_: Any, key: int = key) -> None:
                entry = self.live.pop(key, None)
                if entry:
                    self.current -= entry[1]

            self.live[key] = (weakref.ref(storage, freed), size)
            self.current += size
        self._bump()

    def _bump(self) -> None:
        if self.current > self.peaks.get(self.phase, 0):
            self.peaks[self.phase] = self.current

    @contextlib.contextmanager
    def within(self, phase: str) -> Iterator[None]:
        before, self.phase = self.phase, phase
        self._bump()
        try:
            yield
        finally:
            self.phase = before
            self._bump()

    def wrap(self, owner: Any, name: str, phase: str | Any) -> None:
        """Run `owner.name` inside `phase` (a name, or a function of the call's arguments)."""
        original = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self.within(phase(*args, **kwargs) if callable(phase) else phase):
                return original(*args, **kwargs)

        setattr(owner, name, wrapped)


def _tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer: "w7 w12" is two tokens, so every text has an exact length."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK, **{f"w{i}": i for i in range(3, vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")


def _words(count: int, seed: int, vocab_size: int) -> str:
    return " ".join(f"w{3 + (seed * 7919 + i * 31) % (vocab_size - 3)}" for i in range(count))


def _model_dir(case: Case, root: Path) -> Path:
    """The tiny model, saved once per config with the tokenizer (TRL loads a reference copy from
    the policy's path)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = root / case.model
    if not (directory / "config.json").is_file():
        config = {k: v for k, v in MODELS[case.model].items() if k != "model_type"}
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**config, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None)
                         ).save_pretrained(directory)
        _tokenizer(config["vocab_size"]).save_pretrained(directory)
    return directory


def _dataset(case: Case, rows: int) -> Any:
    from datasets import Dataset

    vocab = MODELS[case.model]["vocab_size"]
    answer = case.completion - 1  # + the end token
    data: list[dict[str, Any]] = []
    for i in range(rows):
        prompt = _words(case.prompt, i, vocab)
        if case.task in ("dpo", "orpo"):
            data.append({"prompt": prompt, "chosen": " " + _words(answer, 100 + i, vocab) + "<eos>",
                         "rejected": " " + _words(answer, 200 + i, vocab) + "<eos>"})
        elif case.task == "kto":
            data.append({"prompt": prompt, "completion": " " + _words(answer, 100 + i, vocab) + "<eos>",
                         "label": i % 2 == 0})
        else:
            data.append({"prompt": prompt})
    return Dataset.from_list(data)


def _length_reward(completions: list[str], **kwargs: Any) -> list[float]:
    return [float(len(text)) for text in completions]


def _trainer(case: Case, directory: Path, out: Path) -> Any:
    """TRL's trainer for the case, as the runner would configure it (fused AdamW, no dropout
    where the trainer turns it off, the reference the case names)."""
    import torch
    from peft import LoraConfig

    dtype = "float32" if case.method == "full" or case.precision == "fp32" else "bfloat16"
    common = dict(output_dir=str(out), use_cpu=True, bf16=case.precision == "bf16", max_steps=2,
                  per_device_train_batch_size=case.batch, learning_rate=1e-5, optim="adamw_torch_fused",
                  report_to=[], save_strategy="no", logging_steps=1, dataloader_num_workers=0,
                  gradient_checkpointing=case.checkpointing, model_init_kwargs={"dtype": dtype})
    peft = (LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
            if case.method == "lora" else None)
    tokenizer = _tokenizer(MODELS[case.model]["vocab_size"])
    rows = 4 * case.batch * case.steps_per_generation
    torch.manual_seed(0)
    if case.task == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, max_length=None, precompute_ref_log_probs=case.reference == "precompute")
        return DPOTrainer(model=str(directory), args=args, train_dataset=_dataset(case, rows),
                          processing_class=tokenizer, peft_config=peft)
    if case.task == "kto":
        from trl import KTOConfig, KTOTrainer

        args = KTOConfig(**common, max_length=None, train_sampling_strategy="sequential",
                         precompute_ref_log_probs=case.reference == "precompute")
        return KTOTrainer(model=str(directory), args=args, train_dataset=_dataset(case, rows),
                          processing_class=tokenizer, peft_config=peft)
    if case.task == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(**common, max_length=case.prompt + case.completion)
        return ORPOTrainer(model=str(directory), args=args, train_dataset=_dataset(case, rows),
                           processing_class=tokenizer, peft_config=peft)
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(**common, num_generations=case.generations, max_completion_length=case.completion,
                      gradient_accumulation_steps=case.steps_per_generation,
                      beta=0.0 if case.reference == "none" else 0.04,
                      generation_kwargs={"eos_token_id": None})
    return GRPOTrainer(model=str(directory), args=args, train_dataset=_dataset(case, rows),
                       processing_class=tokenizer, reward_funcs=_length_reward, peft_config=peft)


def _quiet(trainer: Any) -> Any:
    """No per-step log lines: the table is the output."""
    from transformers import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    return trainer


def _register_weights(tracker: LiveBytes, trainer: Any) -> None:
    for model in (trainer.model, getattr(trainer, "ref_model", None)):
        if model is not None:
            for tensor in [*model.parameters(), *model.buffers()]:
                tracker.add(tensor)


def _instrument(tracker: LiveBytes, trainer: Any, case: Case) -> None:
    """Name the phases where the trainer enters them."""
    import torch
    import torch.optim.optimizer as optim

    tracker.wrap(trainer, "compute_loss", "policy forward")
    tracker.wrap(trainer.accelerator, "backward", "backward")
    ref = getattr(trainer, "ref_model", None)
    if case.task in ("dpo", "kto"):
        if ref is not None:
            tracker.wrap(ref, "forward", "reference forward")
        else:  # the adapter disabled: the policy's own forward inside use_adapter
            module = sys.modules[type(trainer).__module__]
            original = module.use_adapter

            @contextlib.contextmanager
            def use_adapter(*args: Any, **kwargs: Any) -> Iterator[None]:
                with tracker.within("reference forward"), original(*args, **kwargs):
                    yield

            module.use_adapter = use_adapter
    if case.task == "kto":
        original_kl = trainer._compute_kl_logps

        def kl(model: Any, batch: Any) -> Any:
            # the policy's KL pass runs first, outside the reference's forward
            phase = "KL pass" if tracker.phase == "policy forward" else tracker.phase
            with tracker.within(phase):
                return original_kl(model, batch)

        trainer._compute_kl_logps = kl
    if case.task == "grpo":
        tracker.wrap(trainer.model, "generate", "generation")
        tracker.wrap(trainer, "_get_per_token_logps_and_entropies",
                     lambda *a, **k: "policy forward" if torch.is_grad_enabled() else "reference pass")
    optim.register_optimizer_step_pre_hook(lambda *args: setattr(tracker, "phase", "optimizer step"))
    optim.register_optimizer_step_post_hook(lambda *args: setattr(tracker, "phase", "between"))


def _measure_precompute(tracker: LiveBytes, trainer: Any, case: Case) -> None:
    """One batch of the pass `precompute_ref_log_probs` runs in __init__, TRL's own function on
    the policy (no optimizer yet)."""
    from torch.utils.data import DataLoader

    columns = (["prompt_ids", "chosen_ids", "rejected_ids"] if case.task == "dpo"
               else ["prompt_ids", "completion_ids", "KL_completion_ids", "label"])
    dataset = trainer.train_dataset.select_columns(columns)
    batch = next(iter(DataLoader(dataset, batch_size=case.batch, collate_fn=trainer.data_collator)))
    model = trainer.ref_model or trainer.model
    with tracker.mode, tracker.within("precompute"):
        trainer.compute_ref_log_probs(model, batch)


def measure(case: Case) -> dict[str, int]:
    """Peak live tensor bytes in each phase of two optimizer steps of the real trainer."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        directory = _model_dir(case, Path(tmp))
        trainer = _quiet(_trainer(case, directory, Path(tmp) / "out"))
        tracker = LiveBytes()
        _register_weights(tracker, trainer)
        if case.reference == "precompute":
            _measure_precompute(tracker, trainer, case)
        _instrument(tracker, trainer, case)
        torch.manual_seed(0)
        with tracker.mode, tracker.within("between"):
            trainer.train()
    return {phase: peak for phase, peak in tracker.peaks.items() if phase in PHASES}


def case_setup(case: Case) -> TrainSetup:
    seq = case.prompt + case.completion
    return TrainSetup(method=case.method, micro_batch=case.batch, seq_len=seq,  # type: ignore[arg-type]
                      checkpointing=case.checkpointing, precision=case.precision,  # type: ignore[arg-type]
                      optimizer="adamw", lora_r=16, lora_targets=LORA_TARGETS, lora_dropout=0.05, device="cpu",
                      task=case.task, reference=case.reference,  # type: ignore[arg-type]
                      num_generations=case.generations if case.task == "grpo" else 0,
                      prompt_len=case.prompt, completion_len=case.completion if case.task == "grpo" else 0)


def estimate_case(case: Case) -> MemoryEstimate:
    spec = spec_from_config(case.model, "catalog", None, MODELS[case.model])
    return estimate(spec, case_setup(case), budget=1 << 50,
                    grad_accum=case.steps_per_generation)


@dataclass
class Comparison:
    case: Case
    rows: list[tuple[str, int, int]] = field(default_factory=list)  # (phase, measured, estimated)
    estimate: MemoryEstimate | None = None
    seconds: float = 0.0

    @property
    def peak(self) -> tuple[int, int]:
        """The measured peak over the phases, and the estimate's tensor peak over the same phases."""
        return max(m for _, m, _ in self.rows), max(e for _, _, e in self.rows)


def compare(case: Case) -> Comparison:
    start = time.time()
    measured = measure(case)
    est = estimate_case(case)
    result = Comparison(case, estimate=est)
    for phase, names in PHASES.items():
        if phase not in measured:
            continue
        predicted = [est.phases[name] for name in names if name in est.phases]
        if predicted:
            result.rows.append((phase, measured[phase], max(predicted)))
    result.seconds = time.time() - start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--match", default="", help="only cases whose name contains this text")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import datasets
    import torch
    import transformers
    import trl

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    config = MODELS["tiny-llama"]
    lines = [f"# llmwizard.autotune.memory task terms vs TRL's trainers on the CPU ({time.strftime('%Y-%m-%d')})",
             f"# torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
             f"tiny-llama: hidden {config['hidden_size']}, MLP {config['intermediate_size']}, "
             f"{config['num_hidden_layers']} layers, 4 heads over 2 KV heads, vocabulary {config['vocab_size']}",
             "# live tensor bytes at each phase's peak of two optimizer steps (LiveBytes), and the estimate's tensor",
             "# bytes for the same phase (the largest of its phases that fall in it); p<prompt>+<response> tokens,",
             "# b: micro-batch (pairs for dpo/orpo, rows for kto, completions for grpo), grpo g<generations>x<steps",
             "# per generation>. bf16: fp32 weights under CPU bf16 autocast (full) or a bf16 base with fp32 adapters.",
             f"{'case':<44} {'phase':<18} {'measured MiB':>12} {'estimate MiB':>12} {'error':>8}"]
    print("\n".join(lines), flush=True)
    errors: list[float] = []
    peaks: list[float] = []
    for case in [c for c in cases() if args.match in c.name]:
        result = compare(case)
        for phase, measured, predicted in result.rows:
            error = (predicted - measured) / measured
            errors.append(abs(error))
            line = (f"{case.name:<44} {phase:<18} {measured / MiB:>12.1f} {predicted / MiB:>12.1f} "
                    f"{error:>+8.1%}")
            lines.append(line)
            print(line, flush=True)
        measured, predicted = result.peak
        peaks.append(abs(predicted - measured) / measured)
        assert result.estimate is not None
        terms = ", ".join(f"{name} {value / MiB:.1f}" for name, value in result.estimate.components.items())
        line = (f"{case.name:<44} {'PEAK':<18} {measured / MiB:>12.1f} {predicted / MiB:>12.1f} "
                f"{(predicted - measured) / measured:>+8.1%}  ({result.estimate.peak_at}; {terms or '-'}; "
                f"{result.seconds:.0f} s)")
        lines.append(line)
        print(line, flush=True)
    if errors:
        summary = (f"# {len(peaks)} cases: peak median |error| {statistics.median(peaks):.1%}, worst {max(peaks):.1%}; "
                   f"{len(errors)} phases: median |error| {statistics.median(errors):.1%}, worst {max(errors):.1%}")
        lines.append(summary)
        print(summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
