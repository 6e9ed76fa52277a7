"""The memory of DPO, ORPO, KTO and GRPO: the task terms' relations, their refusals, and two
measurements with TRL's real trainers on a tiny model (bench/task_memory.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.memory import GiB, TrainSetup, estimate, reference_options
from llmwizard.autotune.model.model_spec import spec_from_config

LLAMA_8B = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                tie_word_embeddings=False, max_position_embeddings=131072)
LLAMA_1B = dict(LLAMA_8B, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, head_dim=64,
                tie_word_embeddings=True)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BIG = 1 << 50


def spec(config: dict = LLAMA_1B):
    return spec_from_config("llama", "catalog", None, config)


def setup(**changes) -> TrainSetup:
    base = dict(method="full", micro_batch=2, seq_len=1024, lora_targets=TARGETS)
    return TrainSetup(**{**base, **changes})


def est(config: dict = LLAMA_1B, grad_accum: int = 1, budget: int = BIG, vllm_utilization: float = 0.0, **changes):
    return estimate(spec(config), setup(**changes), budget, grad_accum=grad_accum, vllm_utilization=vllm_utilization)


# DPO and ORPO: chosen and rejected in one batch


@pytest.mark.parametrize("method, reference", [("full", "copy"), ("full", "precompute"), ("lora", "adapter"),
                                               ("lora", "precompute"), ("qlora", "adapter")])
def test_dpo_needs_more_than_sft_at_the_same_micro_batch(method, reference):
    sft = est(method=method)
    dpo = est(method=method, task="dpo", reference=reference)
    assert dpo.activations == est(method=method, micro_batch=4, lora_dropout=0.0).activations  # two sequences a pair
    assert dpo.activations > sft.activations and dpo.logits > sft.logits
    assert dpo.tensor_peak > sft.tensor_peak and dpo.total > sft.total


def test_dpo_step_is_sfts_at_twice_the_sequences_without_dropout():
    """With the reference precomputed, DPO's step is an SFT step at twice the micro-batch, with
    dropout off (DPOConfig disable_dropout)."""
    dpo = est(method="lora", task="dpo", reference="precompute", micro_batch=3)
    sft = est(method="lora", micro_batch=6, lora_dropout=0.0)
    training = {name: value for name, value in dpo.phases.items() if "precompute" not in name}
    assert training == sft.phases


def test_orpo_builds_the_full_logits_that_dpos_fused_head_never_does():
    orpo = est(method="lora", task="orpo", seq_len=2048)
    dpo = est(method="lora", task="dpo", reference="precompute", seq_len=2048)
    sequences, vocab = 2 * 2, LLAMA_1B["vocab_size"]
    assert orpo.logits > 4 * sequences * 2048 * vocab  # at least the fp32 logits
    assert dpo.logits < orpo.logits / 4
    assert "reference copy" not in orpo.components and "reference forward" not in orpo.phases


# The reference: copy, adapter, precompute, none


def test_a_lora_reference_costs_no_second_copy():
    sft, dpo = est(method="lora"), est(method="lora", task="dpo", reference="adapter")
    assert "reference copy" not in dpo.components
    assert dpo.params == sft.params
    assert dpo.phases["optimizer step"] == pytest.approx(sft.phases["optimizer step"])


def test_a_copy_costs_the_weights_in_the_policys_dtype():
    model = spec()
    copy, pre = est(task="dpo", reference="copy"), est(task="dpo", reference="precompute")
    assert copy.components["reference copy"] == model.total_params * 4  # fp32 master weights under autocast
    assert copy.phases["optimizer step"] - pre.phases["optimizer step"] == pytest.approx(model.total_params * 4)
    pure = est(task="dpo", reference="copy", precision="pure_bf16")
    assert pure.components["reference copy"] == model.total_params * 2


@pytest.mark.parametrize("strategy, share", [("zero2", 1.0), ("zero3", 0.25), ("fsdp", 0.25)])
def test_a_copy_is_placed_as_trls_prepare_deepspeed_and_prepare_fsdp_place_it(strategy, share):
    """ZeRO-1/2: a stage-0 engine, whole, cast to bf16; ZeRO-3: sharded in bf16; FSDP2: sharded in
    the policy's fp32, and gathered whole (one unit) for its forward."""
    model = spec()
    copy = est(task="dpo", reference="copy", strategy=strategy, num_gpus=4)
    dtype = 4 if strategy == "fsdp" else 2
    assert copy.components["reference copy"] == pytest.approx(model.total_params * dtype * share)
    if strategy == "fsdp":
        adapter = est(task="dpo", reference="precompute", strategy=strategy, num_gpus=4)
        assert copy.components["reference forward"] > model.total_params * 2  # every weight gathered in bf16
        assert copy.phases["reference forward"] > adapter.phases["forward (LM head)"] + model.total_params * 2


def test_precompute_removes_the_reference_and_runs_a_pass_before_training():
    copy, pre = est(task="dpo", reference="copy"), est(task="dpo", reference="precompute")
    assert "reference copy" in copy.components and "reference forward" in copy.phases
    assert "reference copy" not in pre.components and "reference forward" not in pre.phases
    before = pre.phases["reference precompute (before training)"]
    assert before < pre.phases["optimizer step"]  # no optimizer states yet, no gradients
    assert pre.total < copy.total


def test_the_reference_forward_runs_beside_the_policys_activations():
    dpo = est(method="lora", task="dpo", reference="adapter", seq_len=2048)
    assert dpo.phases["reference forward"] > dpo.phases["forward (last layer)"]


def test_a_fp32_copy_under_autocast_caches_half_copies_of_its_weights_for_its_forward():
    """torch's autocast caches the half cast of every weight that requires grad until its region
    ends: the fp32 copy's forward holds a bf16 copy of each linear (not under DeepSpeed or FSDP,
    which gather bf16 weights, nor with a bf16 LoRA base)."""
    from llmwizard.autotune.memory import tasks

    model = spec()
    linear = model.num_layers * sum(lin.d_in * lin.d_out for lin in model.linears)
    assert tasks.autocast_weight_cache(model, setup()) == linear * 2
    assert tasks.autocast_weight_cache(model, setup(), lm_head=True) == (linear + model.vocab_size * 2048) * 2
    for changes in (dict(strategy="zero2", num_gpus=2), dict(strategy="fsdp", num_gpus=2), dict(method="lora"),
                    dict(precision="pure_bf16")):
        assert tasks.autocast_weight_cache(model, setup(**changes)) == 0
    assert est(task="dpo", reference="copy").components["reference forward"] > linear * 2


def test_reference_options_lists_what_the_task_and_method_allow():
    model = spec()
    full = reference_options(model, setup(task="dpo", reference="copy"), BIG)
    assert set(full) == {"copy", "precompute"}
    assert full["copy"].total > full["precompute"].total
    assert set(reference_options(model, setup(method="lora", task="kto", reference="adapter"), BIG)) == {
        "adapter", "precompute"}
    grpo = reference_options(model, setup(task="grpo", reference="none", num_generations=4, completion_len=256,
                                          prompt_len=256), BIG)
    assert set(grpo) == {"copy", "none"} and grpo["copy"].total > grpo["none"].total
    assert set(reference_options(model, setup(task="orpo"), BIG)) == {"none"}
    assert reference_options(model, setup(), BIG) == {}


# KTO


def test_kto_runs_a_no_grad_kl_pass_before_its_policy_forward():
    kto = est(method="lora", task="kto", reference="adapter")
    assert "KL pass (policy, no grad)" in kto.phases and "KL pass" in kto.components
    assert kto.phases["KL pass (policy, no grad)"] < kto.phases["forward (LM head)"]  # nothing kept for backward
    sft = est(method="lora", lora_dropout=0.0)
    assert kto.activations == sft.activations  # rows, not pairs


# GRPO


def grpo(**changes):
    base = dict(task="grpo", reference="none", micro_batch=8, num_generations=8, prompt_len=256, completion_len=512)
    grad_accum = changes.pop("grad_accum", 1)
    return est(grad_accum=grad_accum, **{**base, **changes})


def test_grpo_kv_cache_grows_with_generations_times_completion_length_and_with_grad_accum():
    kv = grpo().components["generation KV cache"]
    # more completion tokens
    assert grpo(completion_len=1024).components["generation KV cache"] == pytest.approx(kv * (256 + 1024) / (256 + 512))
    # each micro-step's completions are generated at once: grad_accum 4 generates 4 times the rows
    assert grpo(grad_accum=4).components["generation KV cache"] == pytest.approx(4 * kv)
    # the same prompts per micro-batch with twice the generations: twice the rows
    assert grpo(micro_batch=16, num_generations=16).components["generation KV cache"] == pytest.approx(2 * kv)
    assert grpo(grad_accum=4).tensor_peak > grpo().tensor_peak


def test_grpo_kv_cache_is_hand_computed():
    """Llama-3.1-8B, bf16 LoRA base: 32 layers x 8 KV heads x 128 x (2 + 2) bytes per token."""
    kv = est(LLAMA_8B, method="lora", task="grpo", reference="none", micro_batch=4, num_generations=4,
             prompt_len=512, completion_len=1536, grad_accum=2).components["generation KV cache"]
    assert kv == 8 * 2048 * 32 * 8 * 128 * 4
    assert kv / GiB == pytest.approx(2.0)


def test_grpo_beta_zero_has_no_reference_and_a_copy_adds_its_pass():
    none, copy = grpo(), grpo(reference="copy")
    assert "reference pass" not in none.phases and "reference copy" not in none.components
    assert "reference pass" in copy.phases and copy.components["reference copy"] == spec().total_params * 4


def test_zero3_gathers_every_weight_for_generation():
    model = spec()
    zero3 = grpo(strategy="zero3", num_gpus=8)
    assert zero3.components["generation weights gathered (ZeRO-3)"] == model.total_params * 2
    assert zero3.phases["generation (last token)"] > model.total_params * 2


def test_vllm_colocated_takes_its_share_and_generates_in_it():
    budget = 80 * GiB
    colocated = grpo(budget=budget, vllm_utilization=0.3)
    assert colocated.components["vLLM colocate share"] == pytest.approx(0.3 * budget)
    assert "generation (last token)" not in colocated.phases and "generation KV cache" not in colocated.components
    assert "old-policy pass" in colocated.phases  # vLLM's importance-sampling correction
    plain = grpo(budget=budget)
    assert colocated.phases["optimizer step"] - plain.phases["optimizer step"] == pytest.approx(0.3 * budget)


# Gradient accumulation, SFT unchanged


def test_gradient_accumulation_holds_the_gradients_through_the_next_micro_step():
    one, four = est(), est(grad_accum=4)
    assert four.phases["forward (LM head)"] - one.phases["forward (LM head)"] == pytest.approx(one.grads)
    assert four.phases["optimizer step"] == one.phases["optimizer step"]


def test_sft_estimates_are_unchanged_and_read_as_before():
    sft = est(method="lora")
    assert sft.components == {} and "components" not in sft.to_dict()
    assert type(sft).from_dict(sft.to_dict()) == sft
    dpo = est(task="dpo", reference="copy")
    assert dpo.to_dict()["components"] == dpo.components
    assert type(dpo).from_dict(dpo.to_dict()) == dpo
    assert any("reference copy" in note for note in dpo.notes)


@pytest.mark.parametrize("changes, words", [
    (dict(task="dpo", reference="none"), "cannot take reference 'none'"),
    (dict(task="orpo", reference="copy"), "cannot take reference"),
    (dict(task="grpo", reference="precompute", completion_len=64, num_generations=2), "cannot take"),
    (dict(task="grpo", reference="none"), "completion length"),
    (dict(reference="copy"), "not of SFT"),
])
def test_settings_the_trainers_refuse_are_user_errors(changes, words):
    with pytest.raises(UserError, match=words):
        est(**changes)


def test_vllm_is_refused_outside_grpo_and_off_the_gpu():
    with pytest.raises(UserError, match="vLLM"):
        est(task="dpo", reference="copy", vllm_utilization=0.3)
    with pytest.raises(UserError, match="GPUs only"):
        grpo(device="cpu", vllm_utilization=0.3)


# Measured: TRL's real trainers on a tiny model, live tensor bytes (bench/task_memory.py)


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "task_memory.py"
    spec_ = importlib.util.spec_from_file_location("task_memory", path)
    module = importlib.util.module_from_spec(spec_)
    sys.modules["task_memory"] = module
    spec_.loader.exec_module(module)
    return module


# The bench's architecture at half its widths and two layers, in fp32 (the CPU's bf16 matmuls are
# slow): a few seconds a case.
SMALL = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, vocab_size=2048)


def _measured(monkeypatch, *args, **kwargs) -> dict[str, tuple[int, int]]:
    pytest.importorskip("trl")
    bench = _bench()
    monkeypatch.setitem(bench.MODELS, "tiny-llama", dict(bench.MODELS["tiny-llama"], **SMALL))
    result = bench.compare(bench.Case(*args, **kwargs, precision="fp32"))
    rows = {phase: (measured, estimated) for phase, measured, estimated in result.rows}
    rows["PEAK"] = result.peak
    return rows


@pytest.mark.parametrize("task, method, reference", [("dpo", "full", "copy"), ("kto", "lora", "adapter")])
def test_reference_forward_and_peak_match_the_real_trainer_within_5_percent(task, method, reference, monkeypatch):
    rows = _measured(monkeypatch, task, method, reference, batch=2, prompt=32, completion=96)
    assert {"reference forward", "backward", "optimizer step"} <= set(rows)
    measured, estimated = rows["reference forward"]
    assert measured > 20 * 2**20  # a real measurement, not an empty tracker
    assert estimated == pytest.approx(measured, rel=0.05)
    measured, estimated = rows["PEAK"]
    assert estimated == pytest.approx(measured, rel=0.05)


def test_grpo_generation_matches_the_real_trainer_within_5_percent(monkeypatch):
    rows = _measured(monkeypatch, "grpo", "lora", "none", batch=4, prompt=32, completion=24)
    measured, estimated = rows["generation"]
    assert measured > 5 * 2**20
    assert estimated == pytest.approx(measured, rel=0.05)



def test_a_what_if_over_the_method_keeps_the_reference_as_that_method_holds_it():
    """The no-fit advice prices "with LoRA" for a full fine-tuning DPO run: LoRA's reference is its
    disabled adapter, full fine-tuning's a copy (plan.yaml refuses the other pairings by name)."""
    lora_what_if = est(method="lora", task="dpo", reference="copy")
    lora = est(method="lora", task="dpo", reference="adapter")
    assert lora_what_if.total == lora.total and "reference copy" not in lora_what_if.components
    assert est(method="full", task="dpo", reference="adapter").total == est(method="full", task="dpo",
                                                                            reference="copy").total
