"""The per-GPU memory model: behaviour, hand-computed figures, and two fake-tensor measurements."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.memory import (
    GiB,
    TrainSetup,
    activation_bytes,
    estimate,
    layer_token_bytes,
    trainable_params,
)
from llmwizard.autotune.model.model_spec import spec_from_config

LLAMA_1B = dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                tie_word_embeddings=True, max_position_embeddings=131072)
LLAMA_8B = dict(LLAMA_1B, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, head_dim=128,
                tie_word_embeddings=False)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BIG = 1 << 50


def spec(config: dict = LLAMA_1B, name: str = "llama"):
    return spec_from_config(name, "catalog", None, config)


def est(config: dict = LLAMA_1B, **changes):
    setup = TrainSetup(**{"lora_targets": TARGETS, **changes})
    return estimate(spec(config), setup, BIG)


def model_states(e) -> int:
    return e.params + e.grads + e.optimizer


# Behaviour


@pytest.mark.parametrize("knob, values", [("seq_len", (512, 1024, 2048, 4096)), ("micro_batch", (1, 2, 4, 8))])
def test_activations_and_total_grow_with_tokens(knob, values):
    estimates = [est(method="lora", **{knob: value}) for value in values]
    assert all(a.activations < b.activations for a, b in zip(estimates, estimates[1:]))
    assert all(a.total < b.total for a, b in zip(estimates, estimates[1:]))
    assert len({e.params for e in estimates}) == 1  # weights do not depend on tokens


def test_more_lora_rank_means_more_trainable_state():
    small, large = est(method="lora", lora_r=8), est(method="lora", lora_r=64)
    assert large.trainable_params == 8 * small.trainable_params
    assert large.grads > small.grads and large.optimizer > small.optimizer


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_checkpointing_reduces_activations(method):
    off = est(method=method, seq_len=2048, micro_batch=2)
    on = est(method=method, seq_len=2048, micro_batch=2, checkpointing=True)
    assert on.activations < off.activations / 3
    assert on.total < off.total


def test_eager_attention_adds_a_term_quadratic_in_sequence():
    model = spec()

    def extra(seq: int) -> float:
        eager = layer_token_bytes(model, TrainSetup(method="lora", seq_len=seq, attention="eager"))
        sdpa = layer_token_bytes(model, TrainSetup(method="lora", seq_len=seq))
        return (eager - sdpa) * seq  # per layer, one sequence

    # fp32 softmax (4 B) + bf16 probabilities (2 B) per head per query-key pair
    assert extra(2048) - extra(1024) == pytest.approx(6 * 32 * (2048**2 - 1024**2), rel=0.01)
    assert est(method="lora", attention="eager", seq_len=4096).total > est(method="lora", seq_len=4096).total


def test_gemma2_falls_back_to_eager_like_transformers():
    gemma = dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000)
    sdpa = est(gemma, method="lora", seq_len=4096)
    assert sdpa.activations == est(gemma, method="lora", seq_len=4096, attention="eager").activations
    assert any("eager" in note for note in sdpa.notes)
    assert est(gemma, method="lora", seq_len=4096, attention="flash").activations < sdpa.activations


@pytest.mark.parametrize("strategy", ["fsdp", "zero3"])
def test_full_sharding_divides_weights_grads_and_states_by_n(strategy):
    base = dict(method="full", strategy=strategy, checkpointing=True)
    two, eight = est(**base, num_gpus=2), est(**base, num_gpus=8)
    assert eight.grads == pytest.approx(two.grads / 4, rel=1e-6)
    assert eight.optimizer == pytest.approx(two.optimizer / 4, rel=1e-6)
    psi = two.total_params
    gathered_two = two.params - psi * (4 if strategy == "fsdp" else 2) / 2
    gathered_eight = eight.params - psi * (4 if strategy == "fsdp" else 2) / 8
    assert gathered_two == pytest.approx(gathered_eight, rel=1e-6)  # the working set does not shrink
    assert 0 < gathered_two < psi  # ...and is a few units, not the model
    assert eight.total < two.total


def test_zero2_shards_grads_and_states_but_not_weights():
    two, eight = est(method="full", strategy="zero2", num_gpus=2), est(method="full", strategy="zero2", num_gpus=8)
    assert two.params == eight.params == 2 * two.total_params  # bf16 weights on every GPU
    assert eight.grads == pytest.approx(two.grads / 4, rel=1e-6)
    assert eight.optimizer == pytest.approx(two.optimizer / 4, rel=1e-6)


def test_ddp_replicates_and_pays_for_gradient_buckets():
    single, ddp = est(method="full"), est(method="full", strategy="ddp", num_gpus=4)
    assert ddp.params == single.params and ddp.optimizer == single.optimizer
    assert ddp.grads == 2 * single.grads  # gradient_as_bucket_view=False: buckets copy every gradient
    assert ddp.overhead > single.overhead  # NCCL


@pytest.mark.parametrize("strategy", ["zero2", "zero3", "fsdp"])
def test_offload_moves_optimizer_states_to_host_ram(strategy):
    kept = est(method="full", strategy=strategy, num_gpus=4, checkpointing=True)
    moved = est(method="full", strategy=strategy, num_gpus=4, checkpointing=True, offload="optimizer")
    assert moved.optimizer == 0 and kept.optimizer > 0
    assert moved.total < kept.total
    # host RAM gains at least the states the GPUs gave up (fp32 masters, Adam moments)
    assert moved.host_ram - kept.host_ram >= 4 * kept.optimizer * 0.5
    assert moved.notes


def test_param_offload_empties_zero3_shards():
    setup = dict(method="full", strategy="zero3", num_gpus=8, checkpointing=True)
    optimizer_only, params_too = est(**setup, offload="optimizer"), est(**setup, offload="params")
    assert params_too.params < optimizer_only.params
    assert params_too.host_ram > optimizer_only.host_ram


def test_host_ram_counts_only_the_processes_of_one_node():
    setup = dict(method="full", strategy="zero3", num_gpus=16, checkpointing=True, offload="optimizer")
    one_node, two_nodes = est(**setup), est(**setup, gpus_per_node=8)
    assert two_nodes.host_ram < one_node.host_ram
    assert two_nodes.total == one_node.total


@pytest.mark.parametrize("config", [LLAMA_1B, LLAMA_8B])
def test_qlora_is_smaller_than_lora_is_smaller_than_full(config):
    sizes = [est(config, method=m, seq_len=2048, checkpointing=True) for m in ("qlora", "lora", "full")]
    assert sizes[0].total < sizes[1].total < sizes[2].total
    assert sizes[0].params < sizes[1].params < sizes[2].params


def test_optimizer_choice_orders_state_size():
    sizes = {opt: est(method="full", optimizer=opt).optimizer for opt in ("adamw", "adamw_8bit", "adafactor", "sgd")}
    assert sizes["sgd"] == 0
    assert sizes["adamw_8bit"] < sizes["adamw"]
    assert sizes["adafactor"] < sizes["adamw_8bit"]


def test_fits_follows_the_budget():
    e = est(method="lora", seq_len=2048)
    assert estimate(spec(), TrainSetup(method="lora", seq_len=2048, lora_targets=TARGETS), e.total).fits
    below = estimate(spec(), TrainSetup(method="lora", seq_len=2048, lora_targets=TARGETS), e.total - 1)
    assert not below.fits and below.budget == e.total - 1


def test_total_is_the_peak_phase_not_the_sum():
    e = est(method="full", seq_len=4096, micro_batch=4)
    assert e.peak_at in e.phases and e.total == pytest.approx(e.phases[e.peak_at] + e.overhead, abs=2)
    assert e.total < e.params + e.grads + e.optimizer + e.activations + e.logits + e.overhead


def test_to_dict_keeps_the_cli_json_shape():
    data = est(method="lora").to_dict()
    assert set(data["per_gpu"]) == {"params", "grads", "optimizer", "activations", "logits", "overhead", "total"}
    for key in ("host_ram", "budget", "fits", "trainable_params", "total_params"):
        assert key in data
    again = type(est(method="lora")).from_dict(data)
    assert again.to_dict() == data


@pytest.mark.parametrize("changes, words", [
    (dict(strategy="ddp", num_gpus=2, offload="optimizer"), "sharded strategy"),
    (dict(strategy="zero2", num_gpus=2, offload="params"), "ZeRO-2"),
    (dict(optimizer="lion"), "optimizer"),
    (dict(seq_len=0), "positive"),
])
def test_bad_setups_raise_user_errors(changes, words):
    with pytest.raises(UserError, match=words):
        est(**changes)


# Hand-computed figures (ZeRO paper, Rajbhandari et al. 2020; LoRA counts; the activation derivation)


def test_lora_trainable_count_is_r_times_din_plus_dout():
    # per layer: q 2048+2048, k 2048+512, v 2048+512, o 2048+2048, gate/up 2048+8192, down 8192+2048
    per_layer = 8 * (4096 + 2560 + 2560 + 4096 + 3 * 10240)
    assert trainable_params(spec(), TrainSetup(method="lora", lora_r=8, lora_targets=TARGETS)) == 16 * per_layer


def test_full_single_gpu_model_states_are_16_bytes_per_parameter_and_fused_adamw_adds_no_temporary():
    e = est(method="full")
    psi = e.total_params
    assert e.params == 4 * psi and e.grads == 4 * psi  # fp32 weights and gradients (AMP)
    assert e.optimizer == 8 * psi  # Adam moments; the exported fused AdamW updates in place (no foreach sqrt)


def test_zero2_matches_the_paper_2psi_plus_14psi_over_n():
    n = 8
    e = est(method="full", strategy="zero2", num_gpus=n, optimizer="sgd")
    psi = e.total_params
    # paper: 2 (bf16 weights) + (2 grads + 12 states) / N; without Adam's moments the states are the
    # fp32 master (4), and the step adds the fp32 gradient partition (4)
    assert e.params + e.grads == pytest.approx(2 * psi + 2 * psi / n, rel=1e-9)
    assert e.optimizer == pytest.approx((4 + 4) * psi / n, rel=1e-9)
    adam = est(method="full", strategy="zero2", num_gpus=n)
    assert adam.optimizer - e.optimizer == pytest.approx(8 * psi / n, rel=1e-9)  # the moments (fused: no temp)


def test_lora_layer_activation_bytes_per_token_hand_computed():
    h, hkv, inter, heads = 2048, 512, 8192, 32
    # two RMSNorms keep an fp32 input (4h each); seven adapters keep a bool dropout mask + the bf16
    # dropout output (3 B per input feature) and their rank-r output; flash keeps q, k, v, out
    # (bf16) + an fp32 logsumexp per head; SwiGLU keeps gate, activation and up (bf16)
    expected = (2 * (4 * h + 8) + 3 * (5 * h + h + inter) + 7 * 2 * 16
                + 2 * (2 * h + 2 * hkv) + 4 * heads + 3 * 2 * inter)
    assert layer_token_bytes(spec(), TrainSetup(method="lora", lora_r=16, lora_targets=TARGETS)) == expected


def test_full_finetune_keeps_autocast_weight_copies_unless_checkpointing():
    model = spec()
    setup = TrainSetup(method="full", seq_len=1, micro_batch=1)
    per_layer_linear = sum(lin.d_in * lin.d_out for lin in model.linears)
    copies = activation_bytes(model, setup) - activation_bytes(model, replace(setup, precision="fp32"))
    # bf16 copies of every layer's fp32 weights (2 B each) stay for backward; tokens barely matter at T=1
    assert copies == pytest.approx(model.num_layers * 2 * per_layer_linear, rel=0.01)


# Measured: FakeTensorMode + MemTracker on a tiny-width model, two real training steps


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "memory_validation.py"
    spec_ = importlib.util.spec_from_file_location("memory_validation", path)
    module = importlib.util.module_from_spec(spec_)
    sys.modules["memory_validation"] = module
    spec_.loader.exec_module(module)
    return module


# A real architecture at tiny widths, for the bench's fake-tensor runs.
TINY_LLAMA = dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=8192,
                  tie_word_embeddings=True, max_position_embeddings=4096)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_estimate_matches_a_fake_tensor_measurement(method, monkeypatch):
    pytest.importorskip("peft")
    bench = _bench()
    monkeypatch.setitem(bench.MODELS, "tiny-llama", TINY_LLAMA)
    case = bench.Case("tiny-llama", method, seq=512, batch=2, checkpointing=False, layers=2)
    measured, estimated, _ = bench.compare(case)
    assert measured > 10 * 2**20  # a real measurement, not an empty tracker
    assert estimated == pytest.approx(measured, rel=0.10)


def test_liger_savings_match_a_fake_tensor_measurement_of_its_kernels_allocations(monkeypatch):
    """Liger's Triton kernels need a GPU; bench/liger_mirror.py mirrors what they allocate, save and
    overwrite in place. The estimate's saving must match the measured one."""
    pytest.importorskip("peft")
    bench = _bench()
    monkeypatch.setitem(bench.MODELS, "tiny-llama", dict(TINY_LLAMA, intermediate_size=1024, vocab_size=4096))
    case = bench.Case("tiny-llama", "lora", seq=1024, batch=4, checkpointing=False, layers=2)
    measured, estimated, _ = bench.compare(case)
    liger_measured, liger_estimated, _ = bench.compare(replace(case, liger=True))
    assert measured - liger_measured > 5 * 2**20  # the mirror's kernels save memory
    assert liger_estimated == pytest.approx(liger_measured, rel=0.05)
    assert estimated - liger_estimated == pytest.approx(measured - liger_measured, rel=0.15)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_activation_offloading_matches_trls_own_hooks_on_fake_tensors(method, monkeypatch):
    """TRL's offloading runs on GPUs only; the bench runs its real pack/unpack hooks on fake
    tensors with the host copies on the meta device. What stays on the device, and the saving,
    must match the estimate."""
    pytest.importorskip("peft")
    bench = _bench()
    monkeypatch.setitem(bench.MODELS, "tiny-llama", dict(TINY_LLAMA, num_hidden_layers=4, vocab_size=4096))
    case = bench.Case("tiny-llama", method, seq=1024, batch=2, checkpointing=False, layers=4)
    measured, estimated, _ = bench.compare(case)
    offloaded_measured, offloaded_estimated, _ = bench.compare(replace(case, offload_activations=True))
    assert measured - offloaded_measured > 5 * 2**20  # the hooks moved activations off the device
    assert offloaded_estimated == pytest.approx(offloaded_measured, rel=0.05)
    assert estimated - offloaded_estimated == pytest.approx(measured - offloaded_measured, rel=0.15)


def test_liger_counts_only_for_model_types_it_patches():
    model = spec()
    setup = TrainSetup(method="lora", seq_len=2048, micro_batch=2, lora_targets=TARGETS)
    saved = activation_bytes(model, setup) - activation_bytes(model, replace(setup, liger=True))
    # per layer and token at least the gated MLP's activation (2 bytes x intermediate) and the
    # norms' fp32 copies less their bf16 inputs
    assert saved >= model.num_layers * 2048 * 2 * (2 * model.intermediate_size + 2 * model.hidden_size)
    other = replace(model, model_type="olmo")
    assert activation_bytes(other, replace(setup, liger=True)) == activation_bytes(other, setup)


def test_estimate_reports_gib_scale_for_a_real_model():
    e = est(LLAMA_8B, method="lora", seq_len=2048, checkpointing=True)
    assert 14 * GiB < e.total < 24 * GiB  # 16 GB of bf16 weights plus checkpointed activations
