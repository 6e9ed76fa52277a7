"""`llmwizard export --target skypilot kubernetes ray`: each file checked by its system's own code
(SkyPilot's task parser, the Kubeflow Trainer API models), refused by name where a target cannot
express the plan, and, marked slow, run for real: the SkyPilot `run` and the TrainJob `command` as
two nodes on loopback with the variables each system sets, the Ray driver on a local Ray cluster
with two CPU workers, each training the embedded model to the end and resuming.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli
from tests.refusals import assert_refused, snapshot

slow = pytest.mark.slow
TWO_NODES = ("--model", "embedded:tiny-llama", "--gpus", "2x8xH100-80GB", "--preset", "multi-node")
HSDP_TWO_NODES = ("--model", "llama-3.1-8b", "--gpus", "8xH100-80GB", "--nodes", "2", "--preset", "multi-node",
                  "--method", "full")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("targets") / "run"
    result = run_cli("export", *TWO_NODES, "--out", str(out), "--target", "skypilot", "kubernetes", "ray")
    assert result.returncode == 0, result.stderr
    return out


def test_the_skypilot_task_loads_through_skypilots_parser(exported: Path):
    sky = pytest.importorskip("sky")
    task = sky.Task.from_yaml(str(exported / "skypilot.yaml"))
    assert task.num_nodes == 2
    assert [dict(r.accelerators) for r in task.resources] == [{"H100": 8}]
    assert task.workdir == "." and "/checkpoints" in task.storage_mounts
    assert "llmwizard" in task.setup and "SKYPILOT_NODE_RANK" in task.run and "bash launch.sh" in task.run
    assert "accelerator H100:8" in (exported / "skypilot.yaml").read_text()


def test_the_trainjob_validates_against_the_trainer_api_models(exported: Path):
    models = pytest.importorskip("kubeflow_trainer_api.models")
    data = yaml.safe_load((exported / "trainjob.yaml").read_text())
    job = models.TrainerV1alpha1TrainJob.from_dict(data)
    # from_dict drops keys the API does not know: the round trip is the whole manifest, unchanged.
    assert job.to_dict() == data
    assert (data["apiVersion"], data["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job.spec.runtime_ref.name == "torch-distributed"
    assert (job.spec.trainer.num_nodes, job.spec.trainer.num_proc_per_node) == (2, 8)
    assert {key: q.actual_instance for key, q in job.spec.trainer.resources_per_node.limits.items()} == {
        "nvidia.com/gpu": "8"}
    assert "PET_NODE_RANK" in job.spec.trainer.command[-1]
    assert "nvidia.com/gpu" in (exported / "trainjob.yaml").read_text()


def test_the_ray_driver_holds_the_plans_world(exported: Path):
    text = (exported / "ray_train.py").read_text()
    compile(text, "ray_train.py", "exec")
    settings = eval(text.split("SETTINGS = ", 1)[1].split("\n\n", 1)[0])  # a literal: the file holds no plan text as code
    assert settings == {"name": "tiny-llama-arithmetic", "num_workers": 16, "use_gpu": True,
                        "resources_per_worker": {"GPU": 1}, "storage_path": "/mnt/cluster_storage/llmwizard"}


def test_targets_stay_in_plan_yaml_and_run_exports_them_again(exported: Path):
    assert yaml.safe_load((exported / "plan.yaml").read_text())["targets"] == ["skypilot", "kubernetes", "ray"]
    from llmwizard.autotune.plan import Plan
    from llmwizard.runner.export import render

    files = render(Plan.load(exported / "plan.yaml"))
    for name in ("skypilot.yaml", "trainjob.yaml", "ray_train.py"):
        assert files[name][0] == (exported / name).read_text()


def test_exporting_targets_imports_none_of_their_packages(tmp_path: Path):
    code = ("import sys; from llmwizard.wizard.cli import main; code = main(['export', *sys.argv[1:]]); "
            "print([m for m in ('sky', 'ray', 'kubeflow_trainer_api', 'torch') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code, *TWO_NODES, "--out", str(tmp_path / "run"), "--target",
                             "skypilot", "kubernetes", "ray"], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(("args", "words"), [
    ((*TWO_NODES[:3], "2x8x24GB", "--preset", "multi-node", "--target", "skypilot"),
     ["--target skypilot", "SkyPilot provisions GPUs by name", "24 GB", "--gpus 8xH100-80GB"]),
    ((*HSDP_TWO_NODES, "--target", "kubernetes", "ray"),
     ["--target ray", "hybrid sharding", "Ray Train places its workers", "--strategy zero3", "hybrid_shard: false"]),
    ((*TWO_NODES, "--target", "slurm"), ["--target", "slurm", "skypilot"]),
    ((*TWO_NODES, "--target"), ["--target"]),
])
def test_a_target_that_cannot_express_the_plan_is_refused_by_name(tmp_path: Path, args: tuple[str, ...],
                                                                   words: list[str]):
    out = tmp_path / "run"
    assert_refused(run_cli("export", *args, "--out", str(out)), words)
    assert not out.exists()


def test_a_hand_edited_plan_yaml_target_is_refused_by_llmwizard_run(exported: Path, tmp_path: Path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(exported, run_dir)
    plan = yaml.safe_load((run_dir / "plan.yaml").read_text())
    plan["targets"] = ["skypilot", "slurm"]
    (run_dir / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    before = snapshot(run_dir)
    assert_refused(run_cli("run", str(run_dir)), ["targets", "slurm"])
    assert snapshot(run_dir) == before


# ----------------------------------------------------------------------------- run for real, on loopback

def _tiny_two_node_run(tmp_path: Path, **changes: object) -> Path:
    from llmwizard.runner.export import export

    from tests.tiny_models import make_plan

    plan = make_plan(strategy="ddp", launcher="torchrun", processes=1, nodes=2, max_steps=2, checkpointing=False)
    plan = dataclasses.replace(plan, save_steps=1, **changes)
    run_dir = tmp_path / "run"
    export(plan, run_dir)
    return run_dir


def _two_nodes(script: str, run_dir: Path, envs: list[dict[str, str]], *args: str) -> str:
    from tests.tiny_models import run_group

    # One `bash -c SCRIPT` per node, both started by one Python parent in a process group of its own.
    code = ("import json, os, subprocess, sys\n"
            "nodes = [subprocess.Popen(['bash', '-c', sys.argv[1], 'node', *sys.argv[3:]], "
            "env=dict(os.environ, **env), cwd=sys.argv[2]) for env in json.loads(os.environ['NODE_ENVS'])]\n"
            "sys.exit(max(node.wait() for node in nodes))\n")
    env = dict(os.environ, NODE_ENVS=json.dumps(envs), LLMWIZARD_PYTHON=sys.executable)
    result = run_group([sys.executable, "-c", code, script, str(run_dir), *args], cwd=run_dir, env=env, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


@slow
def test_the_skypilot_run_trains_as_two_nodes_and_resumes_from_the_bucket(tmp_path: Path):
    from llmwizard.runner.session.launch import free_port

    from tests.tiny_models import losses, strategy_ran

    run_dir = _tiny_two_node_run(tmp_path, targets=["skypilot"])
    task = yaml.safe_load((run_dir / "skypilot.yaml").read_text())
    bucket = tmp_path / "bucket"  # what `--env CHECKPOINT_DIR=...` points at
    port = str(free_port())
    envs = [dict(task["envs"], CHECKPOINT_DIR=str(bucket), SKYPILOT_NODE_RANK=str(rank),
                 SKYPILOT_NODE_IPS="127.0.0.1\n127.0.0.1\n", SKYPILOT_NUM_NODES="2", SKYPILOT_NUM_GPUS_PER_NODE="0",
                 MAIN_PROCESS_PORT=port) for rank in (0, 1)]
    log = _two_nodes(task["run"], run_dir, envs)
    assert strategy_ran(log) == ("ddp", 2)
    assert len(losses(run_dir)) == 2 and (bucket / "checkpoint-2").is_dir()
    # After a "preemption", the same run goes on from the bucket's checkpoint.
    port = str(free_port())
    for env in envs:
        env["MAIN_PROCESS_PORT"] = port
    script = task["run"].replace("--resume\n", "--resume --max_steps 3\n")
    _two_nodes(script, run_dir, envs)
    assert len(losses(run_dir)) == 3 and (bucket / "checkpoint-3").is_dir()
    assert (bucket / "adapter_model.safetensors").is_file()


@slow
def test_the_trainjob_command_trains_as_two_pods_with_the_pet_variables(tmp_path: Path):
    from llmwizard.runner.session.launch import free_port

    from tests.tiny_models import losses, strategy_ran

    run_dir = _tiny_two_node_run(tmp_path, targets=["kubernetes"])
    trainer = yaml.safe_load((run_dir / "trainjob.yaml").read_text())["spec"]["trainer"]
    assert trainer["command"][:2] == ["bash", "-c"]
    port = str(free_port())
    # The volume is mounted where LLMWIZARD_RUN_DIR says: here, the run directory itself.
    envs = [{**{e["name"]: e["value"] for e in trainer["env"]}, "LLMWIZARD_RUN_DIR": str(run_dir),
             "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": str(rank),
             "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": port} for rank in (0, 1)]
    log = _two_nodes(trainer["command"][2], tmp_path, envs)
    assert strategy_ran(log) == ("ddp", 2)
    assert len(losses(run_dir)) == 2 and (run_dir / "output" / "checkpoint-2").is_dir()
    assert (run_dir / "output" / "adapter_model.safetensors").is_file()
    wrong = [dict(env, PET_NNODES="3") for env in envs]
    with pytest.raises(AssertionError, match="the plan is for 2 machines, but the TrainJob set PET_NNODES=3"):
        _two_nodes(trainer["command"][2], tmp_path, wrong)


@slow
def test_the_ray_driver_trains_on_a_local_cluster_keeps_a_checkpoint_and_resumes(tmp_path: Path):
    pytest.importorskip("ray.train")
    from llmwizard.runner.export import export
    from llmwizard.runner.metrics import read_metrics

    from tests.tiny_models import losses, make_plan, run_group

    plan = make_plan(strategy="ddp", processes=2, max_steps=4, checkpointing=False)
    run_dir = tmp_path / "run"
    export(dataclasses.replace(plan, save_steps=2, logging_steps=1, targets=["ray"]), run_dir)
    storage = tmp_path / "ray-storage"
    env = dict(os.environ, RAY_ADDRESS="", RAY_DISABLE_USAGE_STATS="1")
    command = [sys.executable, str(run_dir / "ray_train.py"), "--local-cpus", "2", "--storage-path", str(storage)]
    too_few = run_group([*command[:2], "--local-cpus", "1"], cwd=tmp_path, env=env, timeout=120)
    assert too_few.returncode == 2 and "--local-cpus must be at least the plan's 2 workers" in too_few.stderr
    first = run_group(command, cwd=tmp_path, env=env, timeout=600)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    # Ray prefixes each worker line with "(RayTrainWorker pid=N)".
    assert "llmwizard: strategy=ddp world_size=2 distributed_type=MULTI_CPU" in first.stdout + first.stderr
    kept = sorted(p.name for p in (storage / plan.name).glob("checkpoint-*"))
    assert "checkpoint-4" in kept, kept
    second = run_group([*command, "--max_steps", "6"], cwd=tmp_path, env=env, timeout=600)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    # Steps 1-4, then only 5 and 6: resumed from the checkpoint Ray kept.
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "log" and "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6], steps
    values = losses(run_dir)
    assert max(values[-3:]) < min(values[:2]), f"loss did not fall: {values}"
    state = json.loads((storage / plan.name / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_the_reference_setups_target_files_are_current_and_parse(tmp_path: Path):
    """docs/examples/targets/ is what the script writes from setup 5's plan.yaml today, and each
    file passes its system's own parser."""
    from llmwizard.runner.export.targets.examples import ROOT, generate

    committed = ROOT / "docs" / "examples" / "targets"
    for path in generate(tmp_path):
        assert path.read_text() == (committed / path.name).read_text(), f"{path.name}: run the script again"
    sky = pytest.importorskip("sky")
    assert sky.Task.from_yaml(str(committed / "skypilot.yaml")).num_nodes == 2
    models = pytest.importorskip("kubeflow_trainer_api.models")
    manifest = yaml.safe_load((committed / "trainjob.yaml").read_text())
    assert models.TrainerV1alpha1TrainJob.from_dict(manifest).to_dict() == manifest
    assert "cannot express the plan" in (committed / "README.md").read_text()
    assert "'num_workers': 16" in (committed / "ray_train.py").read_text()


def test_a_hand_edited_target_file_is_kept_and_named_on_export_again(exported: Path, tmp_path: Path):
    import shutil

    from llmwizard.autotune.plan import Plan
    from llmwizard.runner.export import export_files

    run_dir = tmp_path / "run"
    shutil.copytree(exported, run_dir)
    edited = (run_dir / "trainjob.yaml").read_text().replace("pytorch/pytorch:", "registry.example/pytorch:")
    (run_dir / "trainjob.yaml").write_text(edited)
    report = export_files(Plan.load(run_dir / "plan.yaml"), run_dir)
    assert (run_dir / "trainjob.yaml").read_text() == edited
    assert "trainjob.yaml: edited by hand, left as it is" in report.notes


@pytest.mark.parametrize("module", ["__init__", "skypilot", "kubernetes", "ray_train", "ray_worker", "examples"])
def test_each_target_module_imports_none_of_the_heavy_packages(module: str):
    name = "llmwizard.runner.export.targets" + ("" if module == "__init__" else f".{module}")
    code = (f"import sys, {name}\n"
            "print([m for m in ('torch', 'transformers', 'trl', 'ray', 'sky', 'kubeflow_trainer_api', 'textual')"
            " if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
