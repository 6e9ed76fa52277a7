"""docs/examples/: the five reference setups, as docs/examples/generate.py writes them.

The committed files must be exactly what the generator gives today (plans, exported run files,
READMEs); setup 4's torchrun + FSDP route and setup 5's two-machine torchrun route run for real,
scaled to tiny models on the CPU.
"""

from __future__ import annotations

import filecmp
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.tiny_models import losses, make_plan, run_launch_sh, strategy_ran

EXAMPLES = ROOT / "docs" / "examples"
SETUP_4 = EXAMPLES / "4-full-finetune-torchrun" / "run"
SETUP_5 = EXAMPLES / "5-llama-3-8b-fsdp-multinode" / "run"


def _generator():
    spec = importlib.util.spec_from_file_location("generate_examples", EXAMPLES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> set[str]:
    """The generator's files; targets/ is the cluster targets' own (tests/test_targets.py checks it)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.name != "generate.py" and "__pycache__" not in p.parts
            and p.relative_to(root).parts[0] != "targets"}


def test_examples_are_what_the_generator_gives(tmp_path: Path):
    generator = _generator()
    generator.generate(tmp_path)
    assert [folder.name for folder in sorted(tmp_path.iterdir()) if folder.is_dir()] == [s.slug for s in generator.SETUPS]
    fresh, committed = _tree(tmp_path), _tree(EXAMPLES)
    regenerate = "; regenerate with `python docs/examples/generate.py` and review the diff"
    assert fresh == committed, f"files differ: {sorted(fresh ^ committed)}{regenerate}"
    changed = [name for name in sorted(fresh) if not filecmp.cmp(tmp_path / name, EXAMPLES / name, shallow=False)]
    assert not changed, f"out of date: {changed}{regenerate}"
    for name in fresh:  # nothing from this machine or this moment
        text = (tmp_path / name).read_text()
        assert str(tmp_path) not in text and str(ROOT) not in text and not re.search(r"20\d\d-\d\d-\d\dT", text), name


def test_each_setup_readme_shows_commands_and_notes():
    for readme in sorted(EXAMPLES.glob("*/README.md")):
        if readme.parent.name == "targets":  # the cluster targets' page, not a setup
            continue
        text = readme.read_text()
        assert "llmwizard plan --model" in text and "llmwizard export --model" in text, readme
        assert "## Where it differs from the original, and why" in text
    vl = (EXAMPLES / "3-qwen2.5-vl" / "README.md").read_text()
    assert "embedded:shapes" in vl and "not yet supported" not in vl
    assert (SETUP_5 / "slurm.sbatch").is_file()


def _exports(launch_sh: str) -> dict[str, str]:
    return dict(re.findall(r"^export (\w+)=(\S+)$", launch_sh, re.MULTILINE))


@pytest.mark.slow
def test_setup_4_torchrun_fsdp_route_trains_on_the_cpu(tmp_path: Path):
    """Setup 4's export (`--launcher torchrun --strategy fsdp`, full fine-tuning) with the
    embedded tiny model: two gloo ranks, two steps, a sharded checkpoint and the full model."""
    run_dir = tmp_path / "run"
    exported = run_cli("export", "--preset", "full-finetune", "--launcher", "torchrun", "--strategy", "fsdp",
                       "--processes", "2", "--max-steps", "2", "--eval-fraction", "0", "--learning-rate", "0.003",
                       "--out", str(run_dir))
    assert exported.returncode == 0, exported.stderr
    launch = (run_dir / "launch.sh").read_text()
    documented = _exports((SETUP_4 / "launch.sh").read_text())
    assert documented["ACCELERATE_USE_FSDP"] == "true" and documented["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    assert "torch.distributed.run" in launch and "--nproc_per_node 2" in launch
    here = _exports(launch)
    fsdp_keys = {k for k in documented if k.startswith(("FSDP_", "ACCELERATE_"))}
    assert fsdp_keys <= set(here)
    assert all(here[k] == documented[k] for k in fsdp_keys if k != "FSDP_TRANSFORMER_CLS_TO_WRAP")

    first = run_launch_sh(run_dir, tmp_path)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    assert strategy_ran(first.stdout) == ("fsdp2", 2)
    assert len(losses(run_dir)) == 2
    # A sharded checkpoint to resume from (resuming one under torchrun + FSDP: tests/test_strategies.py).
    assert (run_dir / "output" / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()
    assert (run_dir / "output" / "model.safetensors").is_file()


@pytest.mark.slow
def test_setup_5_two_machine_torchrun_fsdp_over_loopback(tmp_path: Path):
    """Setup 5's route (full fine-tuning, FSDP, torchrun with c10d rendezvous on two machines),
    scaled to a tiny Llama: two `bash launch.sh` on one host, MACHINE_RANK 0 and 1."""
    from llmwizard.runner.export import export
    from llmwizard.runner.session.launch import free_port

    plan = make_plan(strategy="fsdp", launcher="torchrun", method="full", processes=1, nodes=2, max_steps=3)
    documented = (SETUP_5 / "launch.sh").read_text()
    run_dir = tmp_path / "run"
    export(plan, run_dir)
    launch = (run_dir / "launch.sh").read_text()
    for flag in ("--rdzv_backend c10d", "--rdzv_endpoint", "--node_rank", "--nnodes 2"):
        assert flag in launch and flag in documented, flag
    port = str(free_port())
    env = dict(os.environ, MAIN_PROCESS_IP="127.0.0.1", MAIN_PROCESS_PORT=port)
    machines = [subprocess.Popen(["bash", str(run_dir / "launch.sh")], cwd=tmp_path, text=True,
                                 env=dict(env, MACHINE_RANK=str(rank)), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) for rank in (0, 1)]
    logs = []
    for machine in machines:
        try:
            out, _ = machine.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for m in machines:
                m.kill()
            raise
        assert machine.returncode == 0, out[-4000:]
        logs.append(out)
    assert strategy_ran("".join(logs)) == ("fsdp2", 2)
    assert len(losses(run_dir)) == 3
    assert (run_dir / "output" / "model.safetensors").is_file()
