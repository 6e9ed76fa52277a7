"""The main command for real: the CLI in a subprocess, a real accelerate launch on the CPU."""

from __future__ import annotations

from pathlib import Path

from llmwizard.runner.metrics import iter_logs, read_metrics
from tests.conftest import run_cli


def test_main_command_trains_and_saves_an_adapter(tmp_path: Path):
    result = run_cli("--preset", "small-dataset", "--yes", "--method", "lora", "--max-steps", "40", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    for name in ("plan.yaml", "accelerate_config.yaml", "sft_config.yaml", "launch.sh", "train.log", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name

    losses = list(iter_logs(read_metrics(run_dir / "metrics.jsonl")))
    steps = [step for step, _ in losses]
    assert len(losses) >= 4
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert steps[-1] == 40
    assert losses[-1][1] < losses[0][1]
    assert "done" in result.stdout and "loss" in result.stdout

    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    output = run_dir / "output"
    config = PeftConfig.from_pretrained(output)
    assert config.r == 4
    from llmwizard.autotune.embedded import ensure_embedded_model

    base = AutoModelForCausalLM.from_pretrained(ensure_embedded_model())
    model = PeftModel.from_pretrained(base, output)
    trained = [n for n, p in model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert trained, "the saved adapter should hold trained (non-zero) LoRA weights"
