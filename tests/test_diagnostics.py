"""Diagnostics over metrics records, failure signatures in train.log, and one real divergent run."""

from __future__ import annotations

import math

import pytest

from llmwizard.runner import diagnostics as dx
from llmwizard.runner import recovery
from llmwizard.runner.metrics import read_metrics
from tests.conftest import run_cli
from tests.refusals import flat


def run_records(losses: list[float], evals: dict[int, float] | None = None, *, start: int = 0,
                max_steps: int | None = None, saves: tuple[int, ...] = (), vocab: int | None = None,
                logging_steps: int = 1, grad_norms: dict[int, float] | None = None) -> list[dict]:
    """Records as the callbacks write them: one log per step from `start + 1`."""
    records: list[dict] = [{"type": "begin", "step": start, "max_steps": max_steps or start + len(losses),
                            "logging_steps": logging_steps, "learning_rate": 2e-4, "vocab_size": vocab}]
    for index, loss in enumerate(losses):
        step = start + index + 1
        records.append({"type": "log", "step": step, "epoch": step / 10, "loss": loss,
                        "grad_norm": (grad_norms or {}).get(step, 1.0), "learning_rate": 2e-4})
        if evals and step in evals:
            records.append({"type": "log", "step": step, "epoch": step / 10, "eval_loss": evals[step]})
        if step in saves:
            records.append({"type": "save", "step": step, "checkpoint": f"output/checkpoint-{step}"})
    return records


def falling(n: int, first: float = 3.0, last: float = 1.0) -> list[float]:
    return [first + (last - first) * i / (n - 1) for i in range(n)]


# ----------------------------------------------------------------------------- initial loss

def test_initial_loss_above_ten_is_flagged_and_below_is_not():
    finding = dx.initial_loss(run_records([12.5, 11.0, 9.0]))
    assert finding is not None and finding.code == "initial_loss" and "12.50" in finding.message
    assert "max_length" in finding.message or "format" in finding.message
    assert dx.initial_loss(run_records([9.5, 8.0])) is None


def test_initial_loss_near_ln_vocab_names_random_weights():
    vocab = 128_256
    finding = dx.initial_loss(run_records([math.log(vocab) - 0.2, 9.0], vocab=vocab))
    assert finding is not None and finding.code == "uniform_loss"
    assert f"ln({vocab})" in finding.message


# ----------------------------------------------------------------------------- divergence

def test_nan_loss_is_a_stop_finding():
    finding = dx.divergence(run_records([2.0, 1.9, float("nan"), float("nan")]))
    assert finding is not None and finding.code == "non_finite" and finding.severity == dx.STOP
    assert finding.step == 3


def test_an_infinite_grad_norm_alone_is_no_divergence():
    """fp16's loss scaler overflows on purpose in the first steps: the step is skipped, no harm done."""
    assert dx.divergence(run_records([2.0, 1.9, 1.8], grad_norms={2: float("inf")})) is None


def test_loss_spike_is_found_and_noise_is_not():
    steady = [2.0, 2.1, 1.9, 2.05, 1.95, 2.0]
    finding = dx.divergence(run_records(steady + [5.5, 7.0]))
    assert finding is not None and finding.code == "spike" and finding.step == 7
    assert dx.divergence(run_records(steady + [5.5, 2.0])) is None           # one hard batch
    assert dx.divergence(run_records(steady + [2.9, 3.0])) is None           # within 2x: noise
    assert dx.divergence(run_records(falling(30, 6.0, 0.5))) is None         # a normal fast start
    assert dx.divergence(run_records([0.02, 0.01, 0.015, 0.012, 0.05])) is None  # tiny absolute jump


def test_a_first_spike_high_loss_is_pending_until_the_next_log():
    steady = [2.0, 2.1, 1.9, 2.05, 1.95, 2.0]
    assert dx.spike_pending(run_records(steady + [5.5]))
    assert not dx.spike_pending(run_records(steady + [5.5, 2.0]))
    assert not dx.spike_pending(run_records(steady + [2.5]))


def test_divergence_since_step_judges_only_new_logs():
    records = run_records([2.0, 2.0, 2.0, 9.0, 9.5, 2.0])
    finding = dx.divergence(records, since_step=5)
    assert finding is not None and finding.step == 4  # confirmed at step 5, first bad at step 4
    assert dx.divergence(records, since_step=6) is None


def test_last_good_checkpoint_is_before_the_first_damaged_weights():
    records = run_records([2.0] * 6 + [9.0], saves=(2, 4, 6))
    # The loss at step 7 was computed with the weights after step 6: checkpoint-6 is damaged.
    assert dx.last_good_checkpoint(records, 7) == "output/checkpoint-4"
    records = run_records([2.0] * 6 + [9.0], saves=(2, 4, 6), logging_steps=3)
    assert dx.last_good_checkpoint(records, 7) == "output/checkpoint-2"
    assert dx.last_good_checkpoint(run_records([2.0, 9.0], saves=(1,)), 2) is None


def test_a_resume_from_before_the_nan_supersedes_it():
    records = run_records([2.0, 1.9, 1.8, float("nan")], saves=(2,))
    records += run_records([1.7, 1.6], start=2)[0:]
    assert dx.divergence(records) is None


# ----------------------------------------------------------------------------- the cause, by its plan.yaml key

INF = float("inf")


def with_settings(records: list[dict], **settings) -> list[dict]:
    """The settings the ranks write into the begin record (llmwizard.runner.rank.callbacks), TRL's names."""
    records[0].update({"weight_decay": 0.0, "warmup_steps": 0.03, "fp16": False, **settings})
    return records


def test_an_inf_grad_norm_from_the_first_step_names_lora_alpha_not_the_learning_rate():
    """lora alpha 16000 on r 16 (alpha/r = 1000): the adapters' gradients overflow from the first step,
    the loss stays finite and the run would end "done" having learned nothing."""
    records = with_settings(run_records([6.5] * 5, grad_norms=dict.fromkeys(range(1, 6), INF)),
                            lora_r=16, lora_alpha=16000)
    finding = dx.divergence(records)
    assert finding is not None and finding.code == "non_finite_grad" and finding.severity == dx.STOP
    assert finding.step == 1
    assert "lora.alpha 16000" in finding.message and "1,000x lora.r 16" in finding.message
    assert "not the learning rate" in finding.message
    assert finding.fix.startswith("Set lora.alpha in plan.yaml to 32")
    assert "learning_rate" not in finding.fix
    assert [f.code for f in dx.diagnose(records, final=True)][0] == "non_finite_grad"


def test_the_gradient_streak_is_judged_once_per_log_and_fp16_overflows_are_no_news():
    grads = dict.fromkeys(range(1, 11), INF)
    records = with_settings(run_records([6.5] * 10, grad_norms=grads), lora_r=8, lora_alpha=16)
    assert dx.divergence(records, since_step=3).step == 1        # confirmed at step 3
    assert dx.divergence(records[:3]) is None                       # two logs: not yet
    fp16 = with_settings(run_records([6.5] * 10, grad_norms=grads), lora_r=8, lora_alpha=16, fp16=True)
    assert dx.divergence(fp16) is None                              # the loss scaler still searching
    ended = dx.divergence(fp16, final=True)                         # but a run that ended learned nothing
    assert ended is not None and ended.code == "non_finite_grad" and "precision in plan.yaml to bf16" in ended.fix
    healed = with_settings(run_records([6.5] * 10, grad_norms={1: INF, 2: INF}), fp16=True)
    assert dx.divergence(healed, final=True) is None                # the scaler found its scale at step 3


@pytest.mark.parametrize(("settings", "key", "value"), [
    ({"weight_decay": 1e308}, "weight_decay", "1e+308"),
    ({"weight_decay": 50.0, "lora_r": 8, "lora_alpha": 16}, "weight_decay", "50"),
    ({"lora_r": 4, "lora_alpha": 4000}, "lora.alpha", "4000"),
    ({"learning_rate": 0.5, "lora_r": 8, "lora_alpha": 16}, "learning_rate", "0.5"),
    ({"learning_rate": 0.05}, "learning_rate", "0.05"),                    # full fine-tuning's range is lower
    ({"weight_decay": 10.0, "learning_rate": 5.0}, "learning_rate", "5"),  # the further out comes first
])
def test_a_divergence_names_the_key_that_was_out_of_range(settings, key, value):
    steady = [2.0, 2.1, 1.9, 2.05, 1.95, 2.0]
    for losses in (steady + [5.5, 7.0], steady + [float("nan")]):
        records = with_settings(run_records(losses))
        records[0].update(settings)
        finding = dx.divergence(records)
        assert finding is not None and finding.severity == dx.STOP
        assert f"Likely cause: {key} {value} " in finding.message, finding.message
        assert finding.fix.startswith(f"Set {key} in plan.yaml"), finding.fix


def test_a_divergence_with_every_setting_in_range_blames_the_learning_rate_by_its_value():
    records = with_settings(run_records([2.0, 2.1, 1.9, 2.05, 1.95, 2.0, 5.5, 7.0]), weight_decay=0.01)
    finding = dx.divergence(records)
    assert "cause" not in finding.message
    assert finding.fix.startswith("Lower learning_rate 0.0002 in plan.yaml (a tenth: --learning-rate 2e-05)")
    early = with_settings(run_records([2.0, 2.1, float("nan")]), warmup_steps=0.0)
    finding = dx.divergence(early)
    assert "Possible cause: warmup_ratio 0" in finding.message
    assert finding.fix.startswith("Set warmup_ratio in plan.yaml to 0.03 to 0.1; or lower learning_rate")


@pytest.mark.slow
def test_a_real_run_with_a_huge_lora_alpha_stops_and_names_it(tmp_path):
    """lora alpha 1e30 (alpha / r far beyond what the schema lets a preset or plan.yaml set, so written
    into sft_config.yaml and launched with --keep-edits): every gradient norm is inf, the run stops as
    diverged and the summary names the key and its value, not the learning rate."""
    run_dir = tmp_path / "run"
    result = run_cli("export", "--max-steps", "8", "--eval-fraction", "0", "--method", "lora", "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    config = run_dir / "sft_config.yaml"
    assert "\nlora_r: 4\nlora_alpha: 8\n" in config.read_text()
    config.write_text(config.read_text().replace("\nlora_alpha: 8\n", "\nlora_alpha: 1" + "0" * 30 + "\n"))
    result = run_cli("run", str(run_dir), "--keep-edits", cwd=tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    records = read_metrics(run_dir / "metrics.jsonl")
    (stop,) = [r for r in records if r["type"] == "stop"]
    assert stop["reason"] == "diverged" and stop["finding"]["code"] == "non_finite_grad"
    assert stop["step"] < 8
    words = flat(result.stdout)
    assert "Likely cause: lora.alpha 1e+30" in words and "Set lora.alpha in plan.yaml to 8" in words
    assert "not the learning rate" in words


# ----------------------------------------------------------------------------- overfitting

def test_eval_rising_while_train_falls_is_overfitting_with_the_best_step():
    evals = {5: 2.0, 10: 1.6, 15: 1.5, 20: 1.55, 25: 1.62, 30: 1.7}
    finding = dx.overfitting(run_records(falling(30), evals))
    assert finding is not None and finding.code == "overfitting" and finding.step == 15
    assert "1.500 at step 15" in finding.message and "epoch 1.5" in finding.message
    assert "fewer epochs" in finding.fix


def test_two_rises_or_train_rising_too_is_not_overfitting():
    two_rises = {5: 2.0, 10: 1.6, 15: 1.5, 20: 1.55, 25: 1.62, 30: 1.6}
    assert dx.overfitting(run_records(falling(30), two_rises)) is None
    rising = {5: 1.5, 10: 1.55, 15: 1.62, 20: 1.7}
    assert dx.overfitting(run_records(falling(20, 1.0, 3.0), rising)) is None


# ----------------------------------------------------------------------------- plateau

def test_flat_loss_is_a_plateau_and_a_falling_one_is_not():
    flat = [2.0 + 0.01 * (-1) ** i for i in range(40)]
    finding = dx.plateau(run_records(flat), final=True)
    assert finding is not None and finding.code == "plateau"
    assert "--learning-rate 6e-04" in finding.fix  # x3 of the run's 2e-4
    assert dx.plateau(run_records(falling(40, 3.0, 1.0)[:20] + [2.0] * 20), final=True) is None


def test_plateau_is_not_judged_in_the_first_half_of_a_live_run():
    flat = [2.0] * 20
    assert dx.plateau(run_records(flat, max_steps=100), final=False) is None
    assert dx.plateau(run_records(flat, max_steps=30), final=False) is not None


def test_still_falling_at_the_end_says_train_longer():
    finding = dx.plateau(run_records(falling(40, 3.0, 1.0)), final=True)
    assert finding is not None and finding.code == "still_falling" and "more epochs" in finding.fix
    assert dx.plateau(run_records(falling(40, 3.0, 1.0)), final=False) is None


def test_still_falling_when_max_steps_capped_the_run_says_raise_max_steps_not_more_epochs():
    records = run_records(falling(40, 3.0, 1.0))  # 40 steps, epoch 4.0 at the end
    records[0]["num_train_epochs"] = 20.0        # the epochs it was planned for: max steps cut it short
    finding = dx.plateau(records, final=True)
    assert finding is not None and finding.code == "still_falling"
    assert "epochs" not in finding.fix.split("(")[0] and finding.fix.startswith("Raise max steps")
    assert "cap of 40 steps, after 4.00 of 20 epochs" in finding.fix
    records[0]["num_train_epochs"] = 4.0         # the epochs ran out first: more epochs is the advice
    assert "more epochs" in dx.plateau(records, final=True).fix


def test_diagnose_puts_stops_first_and_drops_plateau_advice_when_overfitting():
    evals = {5: 2.0, 10: 1.6, 15: 1.5, 20: 1.55, 25: 1.62, 30: 1.7, 35: 1.8, 40: 1.9}
    codes = [f.code for f in dx.diagnose(run_records(falling(40, 3.0, 1.0), evals), final=True)]
    assert codes == ["overfitting"]
    codes = [f.code for f in dx.diagnose(run_records([12.0, 11.0, 10.5, float("nan")]), final=True)]
    assert codes == ["non_finite", "initial_loss"]


# ----------------------------------------------------------------------------- failures in train.log
# Lines below were captured from real failures on this machine (torch 2.13, accelerate 1.15) where
# they could be produced on a CPU; the NCCL ones are NCCL's own wording.

EADDRINUSE = ("torch.distributed.DistNetworkError: The server socket has failed to listen on any local network "
              "address. port: 38765, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use")
ACCELERATE_SIGKILL = ("subprocess.CalledProcessError: Command '['python3', '-m', 'llmwizard.runner.rank.train', '--config', "
                      "'sft_config.yaml']' died with <Signals.SIGKILL: 9>.")
TORCHRUN_SIGKILL = "\n".join([
    "E1123 20:22:41.892000 22558 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: -9) "
    "local_rank: 1 (pid: 22562) of binary: python",
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
    "  rank      : 1 (local_rank: 1)",
    "  exitcode  : -9 (pid: 22562)  (SIGKILL)",
    "  traceback : Signal 9 (SIGKILL) received by PID 22562",
])
GLOO_TIMEOUT = ("[rank0]: RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/"
                "unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation to complete")
NCCL_WATCHDOG = ("[rank1]:[E ProcessGroupNCCL.cpp:632] [Rank 1] Watchdog caught collective operation timeout: "
                 "WorkNCCL(SeqNum=5, OpType=ALLREDUCE, Timeout(ms)=600000) ran for 600035 milliseconds before "
                 "timing out.")
DUPLICATE_GPU = ("[rank1]: torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, "
                 "invalid usage\n"
                 "[rank1]: ncclInvalidUsage: This usually reflects invalid usage of NCCL library.\n"
                 "[rank1]: Last error:\n[rank1]: Duplicate GPU detected : rank 1 and rank 0 both on CUDA device 1000")
CUDA_OOM = ("[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
            "capacity of 23.65 GiB of which 1.06 GiB is free.")
DISK_FULL = "OSError: [Errno 28] No space left on device: 'output/checkpoint-40/optimizer.pt'"
# What torch.save says when the disk fills in the middle of a checkpoint.
TORCH_SAVE_DISK_FULL = ("RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 1408 vs 1302")
MISSING_COLUMN = """llmwizard.autotune.errors.UserError: The dataset has no usable field: found columns ['body'].
Fix: Give each row one of messages, prompt+completion, text."""


@pytest.mark.parametrize(("log", "code", "kind", "rank"), [
    (EADDRINUSE, 1, "port_in_use", None),
    (ACCELERATE_SIGKILL, 1, "killed", None),
    (TORCHRUN_SIGKILL, 1, "killed", 1),
    (GLOO_TIMEOUT, 1, "collective_timeout", 0),
    (NCCL_WATCHDOG, 1, "collective_timeout", 1),
    (DUPLICATE_GPU, 1, "duplicate_gpu", 1),
    (CUDA_OOM, 1, "cuda_oom", 0),
    (DISK_FULL, 1, "disk_full", None),
    (TORCH_SAVE_DISK_FULL, 1, "disk_full", None),
    (MISSING_COLUMN, 1, "dataset_column", None),
    ("", -9, "killed", None),
    ("", 137, "killed", None),
    ("", -15, "signal", None),
    ("", 143, "signal", None),
])
def test_failure_signatures(log, code, kind, rank):
    failure = recovery.diagnose_failure("some output\n" + log + "\nmore output", code)
    assert failure is not None and failure.kind == kind
    assert failure.rank == rank
    assert failure.fix and failure.message


def test_a_sigkill_is_host_memory_only_when_the_oom_killer_acted():
    unknown = recovery.diagnose_failure(TORCHRUN_SIGKILL, 1)
    assert unknown.kind == "killed" and "kill -9" in unknown.message and "cgroup" not in unknown.message
    none = recovery.diagnose_failure(TORCHRUN_SIGKILL, 1, oom_kills=0)
    assert none.kind == "killed" and "not short of RAM" in none.message
    oom = recovery.diagnose_failure(TORCHRUN_SIGKILL, 1, oom_kills=2)
    assert oom.kind == "host_oom" and "2 process(es)" in oom.message and oom.rank == 1


@pytest.mark.parametrize("version", [1, 2])
def test_oom_kill_count_reads_the_cgroup(tmp_path, version):
    self_cgroup = tmp_path / "self"
    if version == 2:
        self_cgroup.write_text("0::/job\n")
        (tmp_path / "job").mkdir()
        (tmp_path / "job" / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 4\n")
    else:
        self_cgroup.write_text("4:memory:/job\n1:cpu:/\n")
        (tmp_path / "memory" / "job").mkdir(parents=True)
        (tmp_path / "memory" / "job" / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    assert recovery.oom_kill_count(tmp_path, self_cgroup) == 4
    assert recovery.oom_kill_count(tmp_path / "nowhere", self_cgroup) is None


def test_the_root_cause_wins_over_its_symptoms():
    log = "\n".join([NCCL_WATCHDOG, CUDA_OOM, TORCHRUN_SIGKILL])
    assert recovery.diagnose_failure(log, 1).kind == "cuda_oom"


def test_a_clean_exit_is_no_failure_and_an_unknown_one_names_the_error():
    assert recovery.diagnose_failure(CUDA_OOM, 0) is None
    failure = recovery.diagnose_failure("Traceback (most recent call last):\nValueError: bad thing\nbye", 1)
    assert failure.kind == "unknown" and "ValueError: bad thing" in failure.message


def test_a_recognised_failure_shows_no_log_lines_only_its_diagnosis():
    log = "\n".join(["start"] + [f"line {i}" for i in range(30)] + [CUDA_OOM] + ["launcher traceback"] * 10)
    failure = recovery.diagnose_failure(log, 1)
    assert failure.kind == "cuda_oom" and failure.evidence == CUDA_OOM
    assert recovery.log_excerpt(log, failure, lines=5) == []


# Two ranks failing at once under torchrun, as train.log holds it: their tracebacks interleave,
# then torch elastic's warnings, the launcher's own traceback and its ChildFailedError banner.
TWO_RANKS_FAILING = """\
llmwizard: loading the dataset
[rank1]: Traceback (most recent call last):
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
[rank1]:   File "/venv/lib/python3.11/site-packages/llmwizard/runner/rank/train.py", line 65, in train
    script_args, training_args, model_args = parser.parse_args_and_config(trl_argv)
                                             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
ValueError: bogus is not a valid SchedulerType, please select one of ['linear', 'cosine']
[rank1]:     raise ValueError(
[rank1]: ValueError: bogus is not a valid SchedulerType, please select one of ['linear', 'cosine']
W1130 06:44:08.203000 22834 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 22851 closing signal SIGTERM
E1130 06:44:08.236000 22834 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1) local_rank: 0
Traceback (most recent call last):
  File "/venv/bin/torchrun", line 8, in <module>
    sys.exit(main())
  File "/venv/lib/python3.11/site-packages/torch/distributed/launcher/api.py", line 383, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n\
============================================================
llmwizard.runner.rank.train FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-30_06:44:08
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 22851)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 22850)
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/accelerate/commands/launch.py", line 999, in simple_launcher
    raise subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)
subprocess.CalledProcessError: Command '['python', '-m', 'llmwizard.runner.rank.train']' returned non-zero exit status 1.
"""


def test_an_unknown_failure_shows_its_last_lines_without_tracebacks_or_launcher_noise():
    failure = recovery.diagnose_failure(TWO_RANKS_FAILING, 1)
    assert failure.kind == "unknown"
    assert failure.evidence.startswith("ValueError: bogus is not a valid SchedulerType")  # not the launcher's error
    assert "ValueError: bogus" in failure.message and "CalledProcessError" not in failure.message
    excerpt = recovery.log_excerpt(TWO_RANKS_FAILING, failure, lines=25)
    assert excerpt[0] == "llmwizard: loading the dataset"
    assert [line for line in excerpt if "ValueError: bogus" in line] == excerpt[1:]
    assert recovery.log_excerpt(TWO_RANKS_FAILING, failure, lines=1) == excerpt[-1:]
    text = "\n".join(recovery.without_tracebacks(TWO_RANKS_FAILING.splitlines()))
    for noise in ("Traceback", 'File "', "^^^", "raise ", "ChildFailedError", "Root Cause", "exitcode",
                  "torch/distributed/elastic", "CalledProcessError", "====="):
        assert noise not in text, noise


def test_incomplete_checkpoints_are_set_aside(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert recovery.last_checkpoint(tmp_path).name == "checkpoint-4"
    moved = recovery.set_aside_incomplete(tmp_path)
    assert [p.name for p in moved] == ["incomplete-checkpoint-6"]
    assert [p.name for p in recovery.checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]


# ----------------------------------------------------------------------------- a real divergent run

@pytest.mark.slow
def test_a_huge_learning_rate_is_stopped_and_the_good_checkpoint_named(tmp_path):
    """Full fine-tuning at learning rate 1 (the most the schema accepts) blows the loss up within a few
    steps, and the summary names learning_rate as the cause."""
    run_dir = tmp_path / "run"
    result = run_cli("export", "--method", "full", "--learning-rate", "1", "--max-steps", "30",
                     "--micro-batch", "4", "--effective-batch", "4", "--eval-fraction", "0", "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    plan = run_dir / "plan.yaml"  # the source of truth: `run` exports sft_config.yaml from it
    assert "\nsave_steps: 7\n" in plan.read_text()
    plan.write_text(plan.read_text().replace("\nsave_steps: 7\n", "\nsave_steps: 1\n"))  # a checkpoint every step
    result = run_cli("run", str(run_dir), cwd=tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]

    records = read_metrics(run_dir / "metrics.jsonl")
    (stop,) = [r for r in records if r["type"] == "stop"]
    assert stop["reason"] == "diverged" and stop["finding"]["severity"] == "stop"
    bad = stop["finding"]["step"]
    last = max(r["step"] for r in records if r["type"] == "log" and "loss" in r)
    assert bad <= stop["step"] == last < 30, "training went on after the divergence"
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "diverged"
    saved = [r["step"] for r in records if r["type"] == "save"]
    assert stop["step"] not in saved, "the damaged weights of the stopping step were saved"
    good = stop["good_checkpoint"]
    assert good == f"output/checkpoint-{bad - 2}" and (run_dir / good / "trainer_state.json").is_file()
    assert "training diverged" in result.stdout and f"{good} (the last saved before the damage)" in result.stdout
    assert "Likely cause: learning_rate 1 is above the 0.001" in flat(result.stdout)
    assert "--learning-rate 1e-01" in result.stdout


# ----------------------------------------------------------------------------- a real SIGKILL

@pytest.mark.slow
def test_a_rank_killed_by_a_signal_is_not_called_out_of_memory(tmp_path):
    """kill -9 of one rank mid-run: the diagnosis says a rank was killed by a signal, and host
    memory only if the kernel's OOM killer acted (the cgroup's count), which it did not here."""
    import os
    import signal

    from llmwizard.runner.export import export
    from tests.tiny_models import launch_until_first_loss, make_plan

    run_dir = tmp_path / "run"
    export(make_plan(strategy="ddp", launcher="torchrun", max_steps=500), run_dir)
    before = recovery.oom_kill_count()
    launch, ranks = launch_until_first_loss(run_dir)
    try:
        os.kill(ranks[-1].pid, signal.SIGKILL)
        code = launch.wait(timeout=120)
    finally:
        if launch.poll() is None:
            launch.kill()
    after = recovery.oom_kill_count()
    kills = None if before is None or after is None else after - before
    failure = recovery.diagnose_failure(launch.log_path.read_text(errors="replace"), code, kills)
    assert code != 0 and failure is not None
    assert failure.kind == "killed", failure
    assert "SIGKILL" in failure.title and "kill -9" in failure.message
    assert "llmwizard resume" in failure.fix


def test_mid_run_advice_never_says_the_run_stopped_at_its_cap():
    from llmwizard.runner.diagnostics import _train_longer

    begin = {"type": "begin", "step": 0, "max_steps": 100, "num_train_epochs": 3}
    mid = [begin, *({"type": "log", "step": s, "epoch": s * 3 / 100, "loss": 1.0} for s in range(1, 51))]
    assert _train_longer(mid) == "train more epochs"
    capped = [{**begin, "num_train_epochs": 6}, *({"type": "log", "step": s, "epoch": s * 3 / 100, "loss": 1.0}
                                                  for s in range(1, 101))]
    assert _train_longer(capped).startswith("raise max steps (the run stopped at its cap of 100 steps, after 3.00 of 6")
