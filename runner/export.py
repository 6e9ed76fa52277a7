"""Exporters: pure functions from a Plan to the files a run is launched from.

    plan.yaml               the Plan itself; loads back into an equal Plan
    accelerate_config.yaml  accelerate's config (CPU, DDP, FSDP2 or DeepSpeed)
    ds_config.json          DeepSpeed ZeRO-2/3, "auto" wherever the HF Trainer fills the value
    sft_config.yaml         TRL's TrlParser format (ScriptArguments + SFTConfig + ModelConfig)
    launch.sh               the exact command, runnable from anywhere: `bash launch.sh`
    slurm.sbatch            multi-node runs under Slurm
    README.txt              how to rerun

Nothing secret is written: hub tokens and tracker keys stay in the environment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from llmwizard.autotune.plan import Plan
from llmwizard.runner.configs import (  # noqa: F401 (the exporters' public names, re-exported)
    DS_CONFIG,
    HOSTFILE,
    METRICS_FILE,
    OUTPUT_DIR,
    accelerate_config,
    deepspeed_config,
    fsdp_config,
    fsdp_environment,
    parallelism_environment,
    sft_config,
)
from llmwizard.runner.scripts import (  # noqa: F401
    IS_HOST,
    launch_command,
    launch_script,
    readme_text,
    slurm_script,
    train_arguments,
)


def export(plan: Plan, directory: Path, python: str | None = None) -> list[Path]:
    """Write every file for `plan` into `directory`; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def write(name: str, text: str, mode: int = 0o644) -> None:
        path = directory / name
        path.write_text(text, encoding="utf-8")
        path.chmod(mode)
        written.append(path)

    plan.save(directory / "plan.yaml")
    written.append(directory / "plan.yaml")
    write("accelerate_config.yaml", _yaml(accelerate_config(plan)))
    ds = deepspeed_config(plan)
    if ds is not None:
        write(DS_CONFIG, json.dumps(ds, indent=2) + "\n")
    write("sft_config.yaml", "# TRL SFT config (TrlParser): python -m llmwizard.runner.train --config sft_config.yaml\n"
          + _yaml(sft_config(plan)))
    write("launch.sh", launch_script(plan, python), 0o755)
    if plan.num_machines > 1:
        write("slurm.sbatch", slurm_script(plan), 0o755)
        if plan.launcher == "deepspeed":
            # With --no_ssh the names are only counted: N machines, slots processes each.
            write(HOSTFILE, "".join(f"node{i} slots={plan.processes_per_machine}\n"
                                    for i in range(plan.num_machines)))
    write("README.txt", readme_text(plan))
    return written


def _yaml(data: dict[str, Any]) -> str:
    # safe_dump quotes strings like "no" that would otherwise load back as booleans.
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
