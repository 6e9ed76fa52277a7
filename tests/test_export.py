"""Exported files are accepted by the real loaders: accelerate, TrlParser, the HF DeepSpeed config."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest
import yaml

from llmwizard.autotune.data.dataset import profile_dataset
from llmwizard.autotune.embedded import EMBEDDED_DATASET, ensure_embedded_model
from llmwizard.autotune.goals import Goals
from llmwizard.autotune.machine.hardware import detect
from llmwizard.autotune.model.model_spec import load_model_spec
from llmwizard.autotune.plan.planner import plan
from llmwizard.autotune.data.tokens import counter_for
from llmwizard.runner.export import export, sft_config
from llmwizard.runner.session.launch import free_port


def _plan(**goals):
    """A plan of the embedded model, LoRA unless asked otherwise (the exporters' LoRA keys are checked
    here; the embedded model's own default is full fine-tuning)."""
    profile = profile_dataset(EMBEDDED_DATASET, counter_for(ensure_embedded_model()))
    return plan(detect(), load_model_spec(None), profile, Goals(**{"method": "lora", **goals}))


@pytest.mark.parametrize("strategy", ["single", "ddp", "fsdp", "zero2", "zero3"])
def test_accelerate_config_loads_with_accelerate(tmp_path, strategy):
    from accelerate.commands.config.config_args import load_config_from_file

    processes = 1 if strategy == "single" else 2
    p = _plan(strategy=strategy, processes=processes)
    export(p, tmp_path)
    config = load_config_from_file(str(tmp_path / "accelerate_config.yaml"))
    assert config.num_processes == processes
    expected = {"single": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}
    assert str(config.distributed_type).split(".")[-1] == expected[strategy]
    if strategy == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
        assert "fsdp_backward_prefetch" not in config.fsdp_config
    if strategy.startswith("zero"):
        raw = yaml.safe_load((tmp_path / "accelerate_config.yaml").read_text())
        assert set(raw["deepspeed_config"]) == {"deepspeed_config_file", "zero3_init_flag"}
        assert "mixed_precision" not in raw


def test_trl_yaml_parses_with_no_unknown_keys(tmp_path):
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    export(_plan(), tmp_path)
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig))
    script, training, model = parser.parse_args_and_config(["--config", str(tmp_path / "sft_config.yaml")])
    data = yaml.safe_load((tmp_path / "sft_config.yaml").read_text())
    known = {f.name for cls in (ScriptArguments, SFTConfig, ModelConfig) for f in dataclasses.fields(cls)}
    assert set(data) - {"env"} <= known
    assert training.use_cpu and not training.bf16
    assert training.activation_checkpointing is False
    assert model.use_peft and model.lora_r == data["lora_r"]


@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_deepspeed_json_is_accepted_by_the_hf_integration(tmp_path, strategy):
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig
    from trl import SFTConfig

    p = _plan(strategy=strategy, processes=2)
    export(p, tmp_path)
    ds = json.loads((tmp_path / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == (3 if strategy == "zero3" else 2)
    args = SFTConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False,
                     per_device_train_batch_size=p.micro_batch, gradient_accumulation_steps=p.grad_accum)
    from transformers import AutoModelForCausalLM

    # Load first: while an HF DeepSpeed ZeRO-3 config exists, from_pretrained uses zero.Init.
    model = AutoModelForCausalLM.from_pretrained(ensure_embedded_model())
    config = HfTrainerDeepSpeedConfig(ds)
    config.trainer_config_process(args)
    config.trainer_config_finalize(args, model=model, num_training_steps=10)
    hidden = model.config.hidden_size
    assert config.config["zero_optimization"]["reduce_bucket_size"] == hidden * hidden
    assert "auto" not in json.dumps(config.config)
    assert config.config["train_micro_batch_size_per_gpu"] == p.micro_batch
    assert config.config["gradient_accumulation_steps"] == p.grad_accum


def test_no_secrets_are_written(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    monkeypatch.setenv("WANDB_API_KEY", "wandb_secret_456")
    export(_plan(), tmp_path)
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert tmp_path / ".llmwizard" / "manifest.json" in files  # it holds the plan too
    for path in files:
        text = path.read_text()
        assert "secret_value" not in text and "secret_456" not in text


def test_cpu_config_turns_bf16_off():
    config = sft_config(_plan())
    assert config["use_cpu"] is True and config["bf16"] is False


# ----------------------------------------------------------------------------- GPU and multi-node plans
# Planned for hardware this machine does not have (hardware.from_spec): the files must be right
# for GPUs even though only their CPU forms run here.

def _gpu_plan(spec: str = "4xA100-80GB", nodes: int = 1, **goals):
    from llmwizard.autotune.machine.hardware import from_spec

    profile = profile_dataset(EMBEDDED_DATASET, counter_for(ensure_embedded_model()))
    return plan(from_spec(spec, nodes=nodes), load_model_spec(None), profile, Goals(**goals))


def _accelerate_args(plan_, config_file, rank="0", ip="10.1.2.3", port="29555"):
    """accelerate's own processing of launch.sh's `accelerate launch` arguments (nothing starts)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    from llmwizard.runner.export import launch_command

    argv, _ = launch_command(plan_)
    argv = argv[argv.index("accelerate.commands.launch") + 1:argv.index("llmwizard.runner.rank.train") + 1]
    values = {"MACHINE_RANK": rank, "MAIN_PROCESS_IP": ip, "MAIN_PROCESS_PORT": port}
    argv = [values[word[2:].split(":")[0]] if word.startswith("${") else word for word in argv]
    argv[argv.index("--config_file") + 1] = str(config_file)
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    return args, defaults


GPU_PLANS = {
    "ddp-bf16": dict(strategy="ddp"),
    "fsdp-ckpt": dict(strategy="fsdp", checkpointing=True),
    "fsdp-offload": dict(strategy="fsdp", offload="params"),
    "zero2-offload": dict(strategy="zero2", offload="optimizer"),
    "zero3-offload": dict(strategy="zero3", offload="params"),
    "zero3-qlora-torchrun": dict(strategy="zero3", method="qlora", launcher="torchrun"),
    "zero3-full-deepspeed": dict(strategy="zero3", method="full", launcher="deepspeed"),
    "fsdp-torchrun-2-nodes": dict(strategy="fsdp", launcher="torchrun", nodes=2),
    "zero2-deepspeed-2-nodes": dict(strategy="zero2", launcher="deepspeed", nodes=2),
}


@pytest.mark.parametrize("name", GPU_PLANS)
def test_gpu_plans_export_files_their_loaders_accept(tmp_path, monkeypatch, name):
    from accelerate.commands.config.config_args import load_config_from_file
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    from llmwizard.autotune.plan import Plan

    goals = dict(GPU_PLANS[name])
    p = _gpu_plan(nodes=goals.pop("nodes", 1), **goals)
    export(p, tmp_path)
    assert Plan.load(tmp_path / "plan.yaml") == p
    load_config_from_file(str(tmp_path / "accelerate_config.yaml"))
    data = yaml.safe_load((tmp_path / "sft_config.yaml").read_text())
    known = {f.name for cls in (ScriptArguments, SFTConfig, ModelConfig) for f in dataclasses.fields(cls)}
    assert set(data) - {"env"} <= known, set(data) - known - {"env"}
    # TrlParser builds every dataclass, from the run directory as launch.sh does (ds_config.json
    # is relative); bf16 is refused on a machine without a GPU, so this parse is told use_cpu.
    monkeypatch.chdir(tmp_path)
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig))
    _, training, model = parser.parse_args_and_config(
        ["--config", "sft_config.yaml", "--bf16", "false", "--use_cpu", "true"])
    assert data["bf16"] is True and data["use_cpu"] is False
    if p.strategy == "fsdp":
        # FSDP checkpoints each layer itself; the Trainer refuses both kinds at once.
        assert data["activation_checkpointing"] is False
    if p.method == "qlora":
        assert model.load_in_4bit and model.bnb_4bit_quant_storage == "bfloat16"
    if p.strategy.startswith("zero") and p.launcher != "accelerate":
        assert data["deepspeed"] == "ds_config.json"
        assert training.hf_deepspeed_config.config["zero_optimization"]["stage"] == int(p.strategy[-1])
    else:
        assert "deepspeed" not in data
    assert subprocess.run(["bash", "-n", str(tmp_path / "launch.sh")]).returncode == 0
    assert (tmp_path / "slurm.sbatch").is_file() == (p.num_machines > 1)


@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
@pytest.mark.parametrize("offload", ["none", "optimizer", "params"])
def test_deepspeed_json_variants_are_accepted_by_transformers_and_deepspeed(tmp_path, strategy, offload):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig
    from trl import SFTConfig

    if strategy == "zero2" and offload == "params":
        pytest.skip("ZeRO-2 does not shard parameters, so there are none to offload")
    p = _gpu_plan(strategy=strategy, offload=offload)
    export(p, tmp_path)
    ds = json.loads((tmp_path / "ds_config.json").read_text())
    zero = ds["zero_optimization"]
    assert ("offload_optimizer" in zero) == (offload != "none")
    assert ("offload_param" in zero) == (offload == "params")
    if offload != "none":
        # DeepSpeed refuses the Trainer's torch AdamW beside an offloaded optimizer.
        assert ds["optimizer"]["type"] == "AdamW"
    args = SFTConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, learning_rate=p.learning_rate,
                     per_device_train_batch_size=p.micro_batch, gradient_accumulation_steps=p.grad_accum)
    model = AutoModelForCausalLM.from_pretrained(ensure_embedded_model())
    config = HfTrainerDeepSpeedConfig(ds)
    config.trainer_config_process(args)
    config.trainer_config_finalize(args, model=model, num_training_steps=10)
    assert "auto" not in json.dumps(config.config)
    if offload != "none":
        assert config.config["optimizer"]["params"]["lr"] == p.learning_rate
    DeepSpeedConfig(config.config)  # DeepSpeed's own validation of the finished config


def test_multi_node_accelerate_config_gives_torchrun_a_c10d_endpoint(tmp_path):
    from accelerate.utils.launch import prepare_multi_gpu_env

    p = _gpu_plan("2x4xH100-80GB", nodes=2, strategy="fsdp")
    assert (p.num_machines, p.num_processes) == (2, 8)
    export(p, tmp_path)
    args, _ = _accelerate_args(p, tmp_path / "accelerate_config.yaml", rank="1")
    prepare_multi_gpu_env(args)
    assert args.rdzv_backend == "c10d" and args.rdzv_endpoint == "10.1.2.3:29555"
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "4", 1)


def test_multi_node_deepspeed_accelerate_config_starts_torchrun_on_each_machine(tmp_path, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    p = _gpu_plan("2x4xH100-80GB", nodes=2, strategy="zero3")
    export(p, tmp_path)
    args, defaults = _accelerate_args(p, tmp_path / "accelerate_config.yaml", rank="1")
    # As accelerate's launch_command does before its DeepSpeed launcher.
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    cmd, env = prepare_deepspeed_cmd_env(args)
    assert cmd is None, "pdsh from machine 0 instead of a launcher per machine"
    assert args.rdzv_endpoint == "10.1.2.3:29555" and args.node_rank == 1
    # Each rank builds its DeepSpeed plugin from that environment: accelerate checks there that
    # nothing in the YAML conflicts with the JSON.
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 3 and plugin.zero3_init_flag


@pytest.mark.parametrize("hybrid", [False, True], ids=["fsdp", "hsdp-2-nodes"])
def test_torchrun_fsdp_environment_is_what_accelerate_launch_exports(tmp_path, hybrid):
    from accelerate.utils.launch import prepare_multi_gpu_env

    from llmwizard.runner.export import fsdp_environment

    p = _gpu_plan("2x4xH100-80GB" if hybrid else "4xA100-80GB", nodes=2 if hybrid else 1,
                  strategy="fsdp", checkpointing=True)
    p = dataclasses.replace(p, hybrid_shard=hybrid)  # the exporter's input, whatever the planner ranked first
    export(p, tmp_path)
    args, _ = _accelerate_args(p, tmp_path / "accelerate_config.yaml", rank="1", port=str(free_port()))
    accelerate_env = prepare_multi_gpu_env(args)
    if hybrid:
        assert accelerate_env["PARALLELISM_CONFIG_DP_REPLICATE_SIZE"] == "2"
        assert accelerate_env["PARALLELISM_CONFIG_DP_SHARD_SIZE"] == "4"
    else:
        assert "ACCELERATE_USE_PARALLELISM_CONFIG" not in accelerate_env
    ours = fsdp_environment(p)
    assert ours["ACCELERATE_USE_FSDP"] == "true", "accelerate only accepts the exact word true"
    for key, value in ours.items():
        assert accelerate_env[key].lower() == value.lower(), key


def test_launch_commands_per_launcher():
    from llmwizard.runner.export import launch_script

    torchrun = launch_script(_plan(strategy="fsdp", processes=2, launcher="torchrun"))
    assert "-m torch.distributed.run --nnodes 1 --nproc_per_node 2" in torchrun
    assert "export ACCELERATE_USE_FSDP=true" in torchrun and "FSDP_CPU_RAM_EFFICIENT_LOADING=true" in torchrun
    deepspeed = launch_script(_gpu_plan(strategy="zero3", launcher="deepspeed", nodes=2))
    assert "--num_nodes 2 --num_gpus 4" in deepspeed and "--no_local_rank" in deepspeed
    assert '--hostfile hostfile --no_ssh --node_rank "${MACHINE_RANK:-0}"' in deepspeed
    accelerate = launch_script(_gpu_plan("2x4xH100-80GB", nodes=2, strategy="ddp"))
    assert ('--machine_rank "${MACHINE_RANK:-0}" --main_process_ip "${MAIN_PROCESS_IP:-$PLAN_MAIN_PROCESS_IP}"'
            in accelerate)
    assert "\nPLAN_MAIN_PROCESS_IP=127.0.0.1\n" in accelerate


def test_slurm_script_escapes_the_node_rank(tmp_path):
    from llmwizard.runner.export import slurm_script

    text = slurm_script(_gpu_plan("2x8xH100-80GB", nodes=2, strategy="zero3"))
    assert '#SBATCH --nodes=2' in text and "#SBATCH --gpus-per-node=8" in text
    assert 'srun --kill-on-bad-exit=1 bash -c "MACHINE_RANK=\\$SLURM_NODEID bash launch.sh"' in text
    (tmp_path / "slurm.sbatch").write_text(text)
    assert subprocess.run(["bash", "-n", str(tmp_path / "slurm.sbatch")]).returncode == 0
