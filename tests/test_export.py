"""Exported files are accepted by the real loaders: accelerate, TrlParser, the HF DeepSpeed config."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from autotune.dataset import profile_dataset
from autotune.embedded import EMBEDDED_DATASET, ensure_embedded_model
from autotune.goals import Goals
from autotune.hardware import detect
from autotune.model_spec import load_model_spec
from autotune.planner import plan
from autotune.tokens import counter_for
from runner.export import export, sft_config


def _plan(**goals):
    profile = profile_dataset(EMBEDDED_DATASET, counter_for(ensure_embedded_model()))
    return plan(detect(), load_model_spec(None), profile, Goals(**goals))


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
    for path in tmp_path.iterdir():
        text = path.read_text()
        assert "secret_value" not in text and "secret_456" not in text


def test_cpu_config_turns_bf16_off():
    config = sft_config(_plan())
    assert config["use_cpu"] is True and config["bf16"] is False
