"""Every plan.yaml key is honoured or refused on this machine before launch: `llmwizard run DIR`
and `resume DIR` refuse a key that this machine, the model or the data cannot carry out, by name
(exit 2, key, value and fix), and leave the run directory as it was. A run directory the run
cannot write in is refused the same way. One run directory is exported per module and copied for
each case; nothing here trains."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmwizard.autotune.plan.plan_steps import TRACKER_SETUP
from tests.conftest import run_cli
from tests.refusals import assert_refused, snapshot


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model and data planned for this machine (the CPU), exported once."""
    out = tmp_path_factory.mktemp("exported") / "run"
    result = run_cli("export", "--out", str(out), "--max-steps", "1", "--method", "lora")
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture()
def run_dir(exported: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(exported, copy, symlinks=True)
    return copy


def edit_plan(run_dir: Path, changes: dict[str, Any]) -> None:
    """Set plan.yaml keys by hand; `lora.x` names a key of the lora mapping."""
    path = run_dir / "plan.yaml"
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if key.startswith("lora."):
            data["lora"][key.removeprefix("lora.")] = value
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def missing_tracker() -> str | None:
    """A tracker whose package is not installed here (the planner lets --report-to name one)."""
    return next((name for name, (module, _) in TRACKER_SETUP.items() if importlib.util.find_spec(module) is None),
                None)


def chat_file(directory: Path) -> str:
    path = directory / "chat.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "2+2"}, {"role": "assistant", "content": "4"}]}\n' * 8)
    return str(path)


# (id, plan.yaml change, words the refusal must hold: the key, the value, the why and the fix)
BAD_PLANS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("cuda-without-gpu", {"device": "cuda"},
     ["device = cuda", "no GPU that CUDA can use", "train on the CPU", "llmwizard export --out DIR"]),
    ("activation-offloading-on-cpu", {"activation_offloading": True},
     ["activation_offloading = true", "this plan has no GPU (TRL's offloading fails on the CPU)",
      "Set activation_offloading: false"]),
    ("liger-on-cpu", {"liger_kernel": True},
     ["liger_kernel = true", "Liger's kernels are Triton kernels and need an NVIDIA GPU", "Set liger_kernel: false"]),
    ("flash-attention-on-cpu", {"attention": "flash"},
     ["attention = flash", "CUDA kernel", "Set attention: sdpa"]),
    ("qlora-on-cpu", {"method": "qlora"},
     ["method = qlora", "QLoRA needs an NVIDIA GPU", "Set method: lora"]),
    ("offload-on-cpu", {"offload": "optimizer", "strategy": "zero2"},
     ["offload = optimizer", "this plan has no GPU", "Set offload: none"]),
    ("lora-target-modules-bogus", {"lora.target_modules": ["bogus"]},
     ["lora.target_modules = [bogus]", "LoRA targets bogus are not linear layers of embedded:tiny-llama",
      "Choose from: q_proj"]),
    ("lora-target-modules-empty", {"lora.target_modules": []},
     ["lora.target_modules = []"]),
    ("lora-peft-targets-bogus", {"lora.peft_targets": ["bogus"]},
     ["lora.peft_targets = [bogus]", "not what lora.target_modules", "Set lora.peft_targets to [q_proj"]),
    ("lora-target-modules-without-peft-targets", {"lora.target_modules": ["q_proj"]},
     ["lora.peft_targets = [q_proj, k_proj", "not what lora.target_modules [q_proj] give"]),
    ("max-length-beyond-positions", {"max_length": 100000},
     ["max_length = 100000", "Max length 100000 is longer than embedded:tiny-llama allows (512 positions)",
      "512 or less"]),
    ("dataset-format-text-on-chat", {"dataset_format": "text"},
     ["dataset_format = text", "holds messages rows", "Set dataset_format: messages"]),
    ("dataset-missing", {"dataset": "/nonexistent/data.jsonl"},
     ["dataset = /nonexistent/data.jsonl", "Dataset file not found"]),
    ("layer-cls-bogus", {"layer_cls": "BogusDecoderLayer"},
     ["layer_cls = BogusDecoderLayer", "not a block class", "Set layer_cls: LlamaDecoderLayer"]),
    ("vision-tower-on-text-model", {"train_vision_tower": True},
     ["train_vision_tower = true", "has no vision tower", "Set train_vision_tower: false"]),
    ("model-source-wrong", {"model_source": "local"},
     ["model_source = local", "source embedded", "Set model_source: embedded"]),
    ("model-missing", {"model": "/nonexistent/model", "model_source": "local"},
     ["model = /nonexistent/model", "Unknown model"]),
    ("ddp-on-one-process", {"strategy": "ddp"},
     ["strategy = ddp", "needs two or more processes", "num_processes 2"]),
    ("deepspeed-launcher-without-zero", {"launcher": "deepspeed"},
     ["launcher = deepspeed", "runs ZeRO strategies, not single", "launcher accelerate or torchrun"]),
    ("hybrid-shard-on-one-machine", {"hybrid_shard": True},
     ["hybrid_shard = true", "two or more machines", "Set hybrid_shard: false"]),
    ("context-parallel-fsdp-on-cpu", {"strategy": "fsdp", "num_processes": 2, "context_parallel": 2},
     ["context_parallel = 2", "needs GPUs with FSDP2", "Set context_parallel: 1"]),
]


@pytest.mark.parametrize("command", ["run", "resume"])
@pytest.mark.parametrize(("changes", "words"), [pytest.param(c, w, id=i) for i, c, w in BAD_PLANS])
def test_plan_key_refused_before_launch(run_dir: Path, command: str, changes: dict[str, Any],
                                        words: list[str]) -> None:
    edit_plan(run_dir, changes)
    before = snapshot(run_dir)
    assert_refused(run_cli(command, str(run_dir)), words)
    assert snapshot(run_dir) == before


def test_missing_tracker_package_refused(run_dir: Path) -> None:
    tracker = missing_tracker()
    if tracker is None:
        pytest.skip("every tracker's package is installed here")
    edit_plan(run_dir, {"report_to": [tracker]})
    before = snapshot(run_dir)
    module = TRACKER_SETUP[tracker][0]
    assert_refused(run_cli("run", str(run_dir)),
                   [f"report_to = [{tracker}]", f"needs the {module} package", f"pip install {module}",
                    "set report_to: []"])
    assert snapshot(run_dir) == before


def test_dataset_format_follows_the_data(run_dir: Path, tmp_path: Path) -> None:
    """The check reads the data the plan names, not the embedded data's format."""
    edit_plan(run_dir, {"dataset": chat_file(tmp_path), "dataset_format": "prompt_completion"})
    before = snapshot(run_dir)
    assert_refused(run_cli("run", str(run_dir)), ["dataset_format = prompt_completion", "holds messages rows"])
    assert snapshot(run_dir) == before


def test_attention_is_exported(run_dir: Path) -> None:
    """A kernel plan.yaml names is what the ranks load (transformers' own default, sdpa, stays unwritten)."""
    from llmwizard.autotune.plan import Plan
    from llmwizard.runner.export.configs import sft_config

    plan = Plan.load(run_dir / "plan.yaml")
    assert "attn_implementation" not in sft_config(plan)
    edit_plan(run_dir, {"attention": "eager"})
    assert sft_config(Plan.load(run_dir / "plan.yaml"))["attn_implementation"] == "eager"


# ----------------------------------------------------------------------------- the run directory

def _file_where_directory_goes(name: str) -> Callable[[Path], None]:
    def make(run_dir: Path) -> None:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        path.write_text("not a directory\n")
    return make


def _directory_where_file_goes(name: str) -> Callable[[Path], None]:
    def make(run_dir: Path) -> None:
        (run_dir / name).mkdir()
        (run_dir / name / "keep.txt").write_text("mine\n")
    return make


# (id, how the directory is broken, words)
BAD_RUN_DIRS = [
    ("output-is-a-file", _file_where_directory_goes("output"),
     ["/output is a file", "writes a directory there", "mv "]),
    ("state-dir-is-a-file", _file_where_directory_goes(".llmwizard"),
     ["/.llmwizard is a file", "writes a directory there"]),
    ("metrics-is-a-directory", _directory_where_file_goes("metrics.jsonl"),
     ["/metrics.jsonl is a directory", "writes a file there"]),
    ("train-log-is-a-directory", _directory_where_file_goes("train.log"),
     ["/train.log is a directory", "writes a file there"]),
]


@pytest.mark.parametrize("command", [["run", "--fresh"], ["resume"]])
@pytest.mark.parametrize(("breaks", "words"), [pytest.param(b, w, id=i) for i, b, w in BAD_RUN_DIRS])
def test_run_dir_of_the_wrong_kind_refused(run_dir: Path, command: list[str], breaks: Callable[[Path], None],
                                           words: list[str]) -> None:
    breaks(run_dir)
    before = snapshot(run_dir)
    assert_refused(run_cli(command[0], str(run_dir), *command[1:]), words)
    assert snapshot(run_dir) == before


def _refuses_writes(directory: Path) -> bool:
    """Whether this process really cannot make a file in `directory` (root ignores permission bits)."""
    try:
        (directory / ".probe").write_text("")
    except OSError:
        return True
    (directory / ".probe").unlink()
    return False


READ_ONLY_PLACE = Path("/sys")  # sysfs refuses new files to everyone, root included


@pytest.mark.parametrize("command", [["run", "--fresh"], ["resume"]])
def test_output_on_a_read_only_place_refused(run_dir: Path, command: list[str]) -> None:
    """A real read-only directory for root and users alike: output/ on a place that takes no files."""
    if not READ_ONLY_PLACE.is_dir() or not _refuses_writes(READ_ONLY_PLACE):
        pytest.skip(f"{READ_ONLY_PLACE} takes files here; no read-only place to point output/ at")
    (run_dir / "output").symlink_to(READ_ONLY_PLACE, target_is_directory=True)
    before = snapshot(run_dir)
    message = assert_refused(run_cli(command[0], str(run_dir), *command[1:]),
                             [f"Cannot write in {run_dir / 'output'}", "Make", "writable"])
    assert "Permission denied" in message or "Read-only" in message
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("command", [["run", "--fresh"], ["resume"]])
def test_read_only_run_dir_refused(run_dir: Path, command: list[str]) -> None:
    os.chmod(run_dir, 0o555)
    try:
        if not _refuses_writes(run_dir):
            pytest.skip("running as root: permission bits do not stop writes (the /sys case covers the check)")
        before = snapshot(run_dir)
        assert_refused(run_cli(command[0], str(run_dir), *command[1:]),
                       [f"Cannot write in {run_dir}", "Permission denied", "writable"])
        assert snapshot(run_dir) == before
    finally:
        os.chmod(run_dir, 0o755)


def test_plan_that_holds_runs(run_dir: Path) -> None:
    """The exported plan passes every check: the refusals above come from the edits alone."""
    from llmwizard.autotune.plan import Plan
    from llmwizard.runner.preflight import check_plan
    from llmwizard.runner.rundir import check_writable

    check_writable(run_dir)
    check_plan(Plan.load(run_dir / "plan.yaml"), run_dir / "plan.yaml")
