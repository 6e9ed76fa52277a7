"""Vision-language fine-tuning: the embedded tiny Qwen2.5-VL and Gemma 3 and the shapes set, images
in datasets (checks by line, profile with image tokens), and real CPU runs through TRL's vision path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmwizard.autotune.embedded import vision as ev
from llmwizard.autotune.data.dataset import load_rows, profile_dataset, resolve_dataset
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.data.images import ImageTokenRule, token_rule
from llmwizard.autotune.model.model_spec import load_model_spec
from llmwizard.autotune.data.tokens import counter_for
from tests.conftest import run_cli


def _png(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path


def _row(images: list[str], parts: int = 1) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image"}] * parts + [{"type": "text", "text": "Shape?"}]},
                         {"role": "assistant", "content": "A red square."}],
            "images": images}


def _vision_profile(source: str, name: str = ev.EMBEDDED_VISION_MODEL):
    model = load_model_spec(name)
    directory = ev.ensure_embedded(name)
    return profile_dataset(resolve_dataset(source), counter_for(directory), token_rule(model.vision, directory),
                           model.name)


def test_tiny_vision_model_loads_with_its_processor_and_counts_match_the_plan():
    from transformers import AutoModelForImageTextToText

    from llmwizard.runner.rank.vision import load_processor

    path = ev.ensure_vision_model()
    model, info = AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    spec = load_model_spec(ev.EMBEDDED_VISION_MODEL)
    assert spec.total_params == sum(p.numel() for p in model.parameters())
    assert spec.vision_params == sum(p.numel() for n, p in model.named_parameters() if ".visual." in n)
    assert set(spec.wrap_classes) == set(model._no_split_modules)  # FSDP wraps vision and decoder blocks
    processor = load_processor(path)
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id


@pytest.mark.parametrize("size", [(84, 84), (30, 500), (1000, 700), (57, 201)])
def test_image_token_rule_matches_the_real_image_processor(size):
    """The torch-free count (smart_resize, patch 14, merge 2) equals what transformers' Qwen2-VL
    image processor produces, for the tiny model's pixel budget and for Qwen's defaults."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image = Image.new("RGB", size, (0, 0, 255))
    tiny = token_rule(load_model_spec(ev.EMBEDDED_VISION_MODEL).vision, ev.ensure_vision_model())
    default = ImageTokenRule("qwen2_5_vl")
    for rule in (tiny, default):
        processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                             size={"shortest_edge": rule.min_pixels, "longest_edge": rule.max_pixels})
        grid = processor(images=[image], return_tensors="np")["image_grid_thw"][0]
        assert rule.tokens(*size) == int(grid.prod()) // 4
        assert rule.patches(*size) == int(grid.prod())


def test_shapes_profile_counts_images_and_image_tokens():
    profile = _vision_profile(ev.EMBEDDED_VISION_DATASET)
    assert profile.num_examples == profile.images == profile.examples_with_images == len(ev.shapes_rows())
    assert profile.max_images_per_example == 1
    assert profile.image_min_size == profile.image_max_size == f"{ev.IMAGE_SIDE}x{ev.IMAGE_SIDE}"
    assert profile.image_tokens_max == 9  # 84 px = 6 x 6 patches, merged 2 x 2
    # The sequence lengths the planner reads include the image tokens.
    assert profile.max_tokens >= profile.text_tokens_p99 + 9 - 1
    assert 0 < profile.image_token_share < 1


def test_parquet_with_image_bytes_profiles_like_paths(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = _png(tmp_path / "a.png", (56, 112))
    rows = [_row([{"bytes": image.read_bytes(), "path": None}]) for _ in range(3)]
    for row in rows:
        row["messages"][1]["content"] = [{"type": "text", "text": "A red square."}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    profile = _vision_profile(str(tmp_path / "d.parquet"))
    assert profile.images == 3 and profile.image_max_size == "56x112"
    assert profile.image_tokens_max == ImageTokenRule("qwen2_5_vl", min_pixels=3136, max_pixels=12544).tokens(56, 112)


@pytest.mark.parametrize("case", ["missing file", "unreadable", "more placeholders"])
def test_bad_image_rows_are_named_by_line(tmp_path, write_jsonl, case):
    good = _png(tmp_path / "img" / "ok.png")
    (tmp_path / "img" / "broken.png").write_text("not a png")
    bad = {"missing file": _row(["img/nope.png"]), "unreadable": _row(["img/broken.png"]),
           "more placeholders": _row(["img/ok.png"], parts=2)}[case]
    path = write_jsonl([_row(["img/ok.png"]), _row([str(good)]), bad])
    with pytest.raises(UserError, match="line 3") as err:
        _vision_profile(str(path))
    assert {"missing file": "nope.png not found", "unreadable": "not a readable image",
            "more placeholders": "2 image placeholders"}[case] in err.value.message


def test_bad_image_row_and_text_model_exit_2_from_the_cli(tmp_path, write_jsonl):
    _png(tmp_path / "ok.png")
    path = write_jsonl([_row(["ok.png"]), _row(["ok.png"]), _row(["gone.png"])])
    result = run_cli("plan", "--model", ev.EMBEDDED_VISION_MODEL, "--dataset", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "line 3" in result.stdout + result.stderr and "gone.png" in result.stdout + result.stderr
    result = run_cli("plan", "--dataset", ev.EMBEDDED_VISION_DATASET, cwd=tmp_path)  # text-only default model
    assert result.returncode == 2 and "text-only" in result.stdout + result.stderr


def test_shapes_rows_match_their_images():
    path = ev.ensure_shapes_dataset()
    rows = load_rows(str(path))
    assert len(rows) == len(ev.shapes_rows())
    for row in rows[:10]:
        _, colour, shape = Path(row["images"][0]).stem.split("-")
        assert row["messages"][1]["content"][0]["text"] == f"A {colour} {shape}."
        assert (path.parent / row["images"][0]).is_file()


# ----------------------------------------------------------------------------- one real run

@pytest.fixture(scope="module")
def vision_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("vision-run")
    result = run_cli("--preset", "small-dataset", "--yes", "--model", ev.EMBEDDED_VISION_MODEL,
                     "--dataset", ev.EMBEDDED_VISION_DATASET, "--max-steps", "10", "--eval-fraction", "0", cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (cwd / "runs").iterdir()
    return run_dir, result


@pytest.mark.slow
def test_vision_run_loss_falls_and_the_plan_says_the_tower_is_frozen(vision_run):
    from llmwizard.runner.metrics import iter_logs, read_metrics

    run_dir, result = vision_run
    losses = list(iter_logs(read_metrics(run_dir / "metrics.jsonl")))
    assert losses[-1][0] == 10
    assert losses[-1][1] < losses[0][1] - 0.5, losses
    plan = (run_dir / "plan.yaml").read_text()
    assert "vision tower frozen" in plan
    assert "image tokens" in plan


@pytest.mark.slow
def test_merge_and_try_refuse_a_vision_run_and_the_summary_does_not_offer_them(vision_run, capsys):
    from llmwizard.wizard.cli import main

    run_dir, result = vision_run
    assert "llmwizard try" not in result.stdout and "llmwizard merge" not in result.stdout
    for argv in (["merge", str(run_dir)], ["try", str(run_dir), "a red circle?"]):
        assert main(argv) == 2
        err = " ".join(capsys.readouterr().err.replace("│", " ").split())
        assert "vision-language model" in err and "AutoModelForImageTextToText" in err, err
    assert not (run_dir / "merged").exists()


@pytest.mark.slow
def test_vision_run_saves_an_adapter_that_loads_with_peft_and_the_processor(vision_run):
    import torch
    from PIL import Image
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from llmwizard.runner.rank.vision import load_processor

    run_dir, _ = vision_run
    output = run_dir / "output"
    processor = load_processor(output)
    base = AutoModelForImageTextToText.from_pretrained(ev.ensure_vision_model())
    model = PeftModel.from_pretrained(base, output)
    adapted = [n for n, p in model.named_parameters() if "lora_B" in n]
    assert adapted and all(".visual." not in n for n in adapted)  # LoRA on the language model only
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    row = json.loads(ev.ensure_shapes_dataset().read_text().splitlines()[0])
    image = Image.open(ev.ensure_shapes_dataset().parent / row["images"][0])
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Shape?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[1] == inputs["input_ids"].shape[1] and torch.isfinite(logits).all()


def test_vision_tower_memory_enters_the_estimate():
    """Pixels and the tower's forward working set count for a frozen tower; a trained tower adds its
    saved tensors (figures checked at real widths by bench/memory_validation.py --vision)."""
    from llmwizard.autotune.memory import TrainSetup, estimate

    model = load_model_spec("qwen2.5-vl-7b")
    text = TrainSetup(method="lora", seq_len=2048, micro_batch=1)
    frozen = TrainSetup(method="lora", seq_len=2048, micro_batch=1, image_patches=4096)
    trained = TrainSetup(method="lora", seq_len=2048, micro_batch=1, image_patches=4096, train_vision_tower=True)
    budget = 80 * 2**30
    base, with_pixels, with_tower = (estimate(model, s, budget) for s in (text, frozen, trained))
    assert with_pixels.activations == base.activations + 4096 * 1176 * 4
    assert "forward (vision tower)" in with_pixels.phases
    assert with_tower.activations > with_pixels.activations + 32 * 4096 * 1280 * 10
    assert with_tower.trainable_params == base.trainable_params + model.vision.lora_params(text.lora_r)


def test_reference_setup_qwen_vl_full_fsdp_exports_files_accelerate_and_trl_load(tmp_path, write_jsonl, monkeypatch):
    """Qwen2.5-VL-7B full fine-tuning with FSDP over both block kinds, adafactor, a constant LR,
    evaluation and checkpoints every N steps, the best model by eval loss (safetensors: the
    transformers default), planned for 8 H100s and exported."""
    import dataclasses

    import yaml
    from accelerate.commands.config.config_args import load_config_from_file
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    _png(tmp_path / "img" / "a.png", (1024, 768))
    _png(tmp_path / "img" / "b.png", (640, 480))
    rows = [_row([f"img/{'ab'[i % 2]}.png"]) for i in range(40)]
    path = write_jsonl(rows)
    out = tmp_path / "run"
    result = run_cli("export", "--model", "qwen2.5-vl-7b", "--dataset", str(path), "--gpus", "8xH100-80GB",
                     "--method", "full", "--strategy", "fsdp", "--optimizer", "adafactor", "--lr-scheduler", "constant",
                     "--eval-steps", "25", "--max-steps", "200", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    accelerate = load_config_from_file(str(out / "accelerate_config.yaml"))
    assert str(accelerate.distributed_type).endswith("FSDP") and accelerate.num_processes == 8
    wrapped = set(accelerate.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","))
    assert wrapped == {"Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"}
    data = yaml.safe_load((out / "sft_config.yaml").read_text())
    known = {f.name for cls in (ScriptArguments, SFTConfig, ModelConfig) for f in dataclasses.fields(cls)}
    assert set(data) - {"env"} <= known
    monkeypatch.chdir(out)
    _, training, model = TrlParser((ScriptArguments, SFTConfig, ModelConfig)).parse_args_and_config(
        ["--config", "sft_config.yaml", "--bf16", "false", "--use_cpu", "true"])
    assert model.model_name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct" and not model.use_peft
    assert training.optim == "adafactor" and training.lr_scheduler_type == "constant"
    assert training.eval_steps == training.save_steps == 25 and training.eval_strategy == "steps"
    assert training.load_best_model_at_end and training.metric_for_best_model == "eval_loss"
    assert not training.greater_is_better
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert plan["train_vision_tower"] is True and "under FSDP each vision block and decoder layer is wrapped" in plan["reasons"]["vision"]
    assert plan["max_length"] >= ImageTokenRule("qwen2_5_vl").tokens(1024, 768)  # the length covers the image


def test_wizard_dataset_step_shows_image_counts_and_tokens():
    from rich.console import Console

    from llmwizard.wizard import core
    from llmwizard.wizard.screens.dataset import dataset_facts

    report = core.profile_dataset(ev.EMBEDDED_VISION_DATASET, load_model_spec(ev.EMBEDDED_VISION_MODEL))
    console = Console(width=200, record=True)
    console.print(dataset_facts(report))
    text = console.export_text()
    assert f"{len(ev.shapes_rows())} in {len(ev.shapes_rows())} examples" in text
    assert "image tokens" in text and "max 9 per example" in text


@pytest.mark.parametrize("name", [ev.EMBEDDED_VISION_MODEL, ev.EMBEDDED_GEMMA3_MODEL])
@pytest.mark.parametrize("train_tower", [False, True])
def test_lora_targets_adapt_what_the_plan_counts(name, train_tower):
    """The plan's PEFT regex (TRL passes a one-item list on as a string) puts adapters on the
    language model only, or on the tower's blocks too, and PEFT's count is the plan's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from llmwizard.autotune.memory import vision

    spec = load_model_spec(name)
    targets = vision.lora_targets(spec, spec.linear_names, train_tower)
    assert len(targets) == 1
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(ev.ensure_embedded(name)),
                           LoraConfig(r=4, target_modules=targets[0]))
    adapted = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert any(".language_model." in n for n in adapted)
    assert any(".visual." in n or ".vision_tower." in n for n in adapted) == train_tower
    expected = spec.lora_params(4) + (spec.vision.lora_params(4) if train_tower else 0)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


# ----------------------------------------------------------------------------- Gemma 3

def test_tiny_gemma3_model_loads_with_autoprocessor_and_counts_match_the_plan():
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = ev.ensure_gemma3_model()
    model, info = AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    assert not info["missing_keys"] and not info["unexpected_keys"]
    spec = load_model_spec(ev.EMBEDDED_GEMMA3_MODEL)
    assert spec.total_params == sum(p.numel() for p in model.parameters())
    assert spec.vision_params == sum(p.numel() for n, p in model.named_parameters()
                                     if ".vision_tower." in n or ".multi_modal_projector." in n)
    present = {type(m).__name__ for m in model.modules()}
    assert set(spec.wrap_classes) == set(model._no_split_modules) & present  # SigLIP lists its text tower's too
    processor = AutoProcessor.from_pretrained(path)  # Gemma 3 needs no video processor, so no torchvision
    assert type(processor).__name__ == "Gemma3Processor"
    assert processor.image_seq_length == model.config.mm_tokens_per_image == spec.vision.tokens_per_image
    tokenizer = processor.tokenizer
    assert (tokenizer.boi_token_id, tokenizer.eoi_token_id, tokenizer.image_token_id) == (
        model.config.boi_token_id, model.config.eoi_token_id, model.config.image_token_id)


def test_gemma3_token_rule_matches_the_real_processor():
    """The torch-free count of a shapes row (chat template, the fixed tokens per image and the
    markers Gemma3Processor puts around them) equals the processor's input_ids, and the image
    gets exactly mm_tokens_per_image soft tokens."""
    from PIL import Image
    from transformers import AutoProcessor

    path = ev.ensure_gemma3_model()
    processor = AutoProcessor.from_pretrained(path)
    rule = token_rule(load_model_spec(ev.EMBEDDED_GEMMA3_MODEL).vision, path)
    counter = counter_for(path)
    shapes = ev.ensure_shapes_dataset()
    for row in load_rows(str(shapes))[:3]:
        image = Image.open(shapes.parent / row["images"][0])
        messages = json.loads(json.dumps(row["messages"]))
        messages[0]["content"][0] = {"type": "image", "image": image}
        ids = processor.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        ids = ids[0] if isinstance(ids[0], list) else ids
        assert ids.count(processor.tokenizer.image_token_id) == ev.GEMMA3_TOKENS_PER_IMAGE
        assert counter.count(row) - 1 + rule.tokens(*image.size) == len(ids)
    profile = _vision_profile(ev.EMBEDDED_VISION_DATASET, ev.EMBEDDED_GEMMA3_MODEL)
    assert profile.image_tokens_max == rule.tokens(ev.IMAGE_SIDE, ev.IMAGE_SIDE) > ev.GEMMA3_TOKENS_PER_IMAGE


def test_gemma3_plan_counts_fixed_image_tokens_and_one_square_of_patches_per_image():
    """gemma-3-4b (catalog, no tokenizer here): 256 tokens + 4 markers per image, whatever its size,
    and the tower encodes 64 x 64 patches per image; the planner's max length and memory use them."""
    from llmwizard.autotune.memory import vision

    model = load_model_spec("gemma-3-4b")
    assert model.vision is not None and model.vision.tokens_per_image == 256
    profile = profile_dataset(resolve_dataset(ev.EMBEDDED_VISION_DATASET), counter_for(None),
                              token_rule(model.vision), model.name)
    assert profile.image_tokens_max == profile.image_tokens_p99 == 256 + 4
    per_image = (model.vision.image_size // model.vision.patch_size) ** 2
    assert per_image == 4096
    assert vision.sequence_patches(model, profile.image_tokens_max, profile.max_images_per_example) == per_image
    assert vision.sequence_patches(model, 3 * 260, 3) == 3 * per_image
    result = run_cli("plan", "--model", "gemma-3-4b", "--gpus", "1xH100-80GB", "--dataset",
                     ev.EMBEDDED_VISION_DATASET, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    plan = json.loads(result.stdout)
    reasons = dict(reason.split(": ", 1) for reason in plan["reasons"])
    assert plan["max_length"] >= profile.max_tokens >= 260
    assert "up to 260 image tokens and 4,096 tower patches" in reasons["vision"]
    assert "256 tokens per image (fixed) and 4 around it" in reasons["max_length"]


@pytest.fixture(scope="module")
def gemma3_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("gemma3-run")
    result = run_cli("--preset", "small-dataset", "--yes", "--model", ev.EMBEDDED_GEMMA3_MODEL,
                     "--dataset", ev.EMBEDDED_VISION_DATASET, "--max-steps", "10", "--eval-fraction", "0", cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (cwd / "runs").iterdir()
    return run_dir, result


@pytest.mark.slow
def test_gemma3_run_loss_falls_with_the_tower_frozen(gemma3_run):
    from llmwizard.runner.metrics import iter_logs, read_metrics

    run_dir, _ = gemma3_run
    losses = list(iter_logs(read_metrics(run_dir / "metrics.jsonl")))
    assert losses[-1][0] == 10
    assert losses[-1][1] < losses[0][1] - 0.5, losses
    plan = (run_dir / "plan.yaml").read_text()
    assert "vision tower frozen (model.vision_tower" in plan
    assert f"{ev.GEMMA3_TOKENS_PER_IMAGE} tokens per image (fixed)" in plan


@pytest.mark.slow
def test_gemma3_run_saves_an_adapter_peft_loads_and_a_processor_autoprocessor_loads(gemma3_run):
    import torch
    from PIL import Image
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    run_dir, _ = gemma3_run
    output = run_dir / "output"
    processor = AutoProcessor.from_pretrained(output)
    assert type(processor).__name__ == "Gemma3Processor"
    assert processor.image_seq_length == ev.GEMMA3_TOKENS_PER_IMAGE
    base = AutoModelForImageTextToText.from_pretrained(ev.ensure_gemma3_model())
    model = PeftModel.from_pretrained(base, output)
    adapted = [n for n, p in model.named_parameters() if "lora_B" in n]
    assert adapted and all(".language_model." in n for n in adapted)  # nothing on the tower or projector
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    shapes = ev.ensure_shapes_dataset()
    image = Image.open(shapes.parent / load_rows(str(shapes))[0]["images"][0])
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Shape?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    assert "pixel_values" in inputs and "token_type_ids" in inputs
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[1] == inputs["input_ids"].shape[1] and torch.isfinite(logits).all()


@pytest.mark.slow
def test_full_fine_tuning_under_fsdp_wraps_vision_and_decoder_blocks_and_trains_on_two_ranks(tmp_path):
    """Full fine-tuning of the tiny vision-language model with FSDP2 on two gloo ranks: both the
    vision blocks and the decoder layers are wrap classes, the run completes, and output/ holds a
    whole model with its vision tower that transformers loads."""
    import yaml

    run_dir = tmp_path / "run"
    result = run_cli("export", "--model", ev.EMBEDDED_VISION_MODEL, "--dataset", ev.EMBEDDED_VISION_DATASET,
                     "--method", "full", "--strategy", "fsdp", "--processes", "2", "--max-steps", "2",
                     "--eval-fraction", "0", "--out", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    fsdp = yaml.safe_load((run_dir / "accelerate_config.yaml").read_text())["fsdp_config"]
    assert set(fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")) == {"Qwen2_5_VLDecoderLayer",
                                                                         "Qwen2_5_VLVisionBlock"}
    result = run_cli("run", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from llmwizard.runner.metrics import read_metrics

    records = read_metrics(run_dir / "metrics.jsonl")
    assert records[0]["world_size"] == 2 and records[-1]["type"] == "end" and records[-1]["reason"] == "completed"
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(run_dir / "output")
    assert any(name.startswith("model.visual.blocks.") for name, _ in model.named_parameters())


def test_a_re_plan_sizes_the_vision_tower_as_the_plan_did():
    """After an out-of-memory failure the re-plan prices the plan's own setup, images included."""
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.machine.hardware import from_spec
    from llmwizard.autotune.memory import estimate
    from llmwizard.autotune.plan.planner import plan as make_plan
    from llmwizard.autotune.plan.replan import setup_of

    model = load_model_spec("qwen2.5-vl-7b")
    dataset = profile_dataset(resolve_dataset(ev.EMBEDDED_VISION_DATASET), counter_for(None),
                              token_rule(model.vision), model.name)
    planned = make_plan(from_spec("1xA100-80GB"), model, dataset, Goals(method="lora"))
    setup = setup_of(planned)
    assert planned.image_patches > 0 and setup.image_patches == planned.image_patches
    assert estimate(model, setup, planned.estimate.budget).total == planned.estimate.total


@pytest.mark.slow
def test_a_vision_run_writes_its_samples_from_the_images(tmp_path):
    """The held-out rows are generated with their images through the processor (a vision run
    wrote no samples.jsonl: its prompts are content lists, not text)."""
    import json

    result = run_cli("--yes", "--model", ev.EMBEDDED_VISION_MODEL, "--dataset", ev.EMBEDDED_VISION_DATASET,
                     "--max-steps", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "could not generate samples" not in (run_dir / "train.log").read_text()
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples and all(sample["prompt"].startswith("[image] ") and sample["reference"] for sample in samples)
    assert "sample" in " ".join(result.stdout.split())
