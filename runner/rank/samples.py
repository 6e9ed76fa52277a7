"""A first look at what a run learned: greedy generations from held-out examples, and from a prompt.

At the end of a run held-out evaluation examples are generated (greedy) and rank 0 writes
`samples.jsonl` in the run directory, one JSON object per line: prompt, reference, output (and the
step). The first SAMPLE_COUNT are shown whatever their length. Every generated row whose reference
is a short answer (at most SHORT_ANSWER_TOKENS tokens, as the bundled arithmetic's are) is also
scored: `exact` says whether the output is the reference, and the summary shows the rate
("held-out  37/40 answers exact (92%) ..."). Short answers need few new tokens, so scoring SCORED_COUNT rows
stays cheap; data with long answers (where an exact match says little) is not scored and costs
nothing more. Rank 0 generates alone when it holds the whole model; when the weights are sharded (FSDP,
ZeRO-3) every rank generates the same prompts in step (`synced_gpus`), since each forward gathers
its layers from all ranks. The summary shows the first. `llmwizard try RUN "prompt"` uses the
same generation for the tuned model and the base side by side (llmwizard.wizard.after_commands).

Preference and reward runs (DPO, ORPO, KTO, GRPO) write them too, from their held-out prompts: the
reference is the chosen (or desirable) response, or the prompt's `answer` (`split_example`).

Prompts go through the tokenizer's chat template when it has one (what serving will do), else as
plain text. Reading samples.jsonl (`read_samples`) needs no torch; generating does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SAMPLES_FILE = "samples.jsonl"
SAMPLE_COUNT = 3
SAMPLE_NEW_TOKENS = 32
# Held-out rows generated at most, for the exact-answer rate; train.py takes this many eval rows.
SCORED_COUNT = 40
# A reference of at most this many tokens is an answer that can be checked exactly.
SHORT_ANSWER_TOKENS = 16


def printable(text: str) -> str:
    """`text` safe to show in a terminal or a page: control characters (an untrained model emits
    them) become U+FFFD; newlines and tabs stay."""
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "\ufffd" for ch in text)


def content_text(content: Any) -> str:
    """A message's text: the content itself, or the text parts of a multimodal content list (an
    image part reads as [image])."""
    if isinstance(content, list):
        parts = [str(part.get("text", "")) if part.get("type") == "text" else f"[{part.get('type')}]"
                 for part in content if isinstance(part, dict)]
        return " ".join(part for part in parts if part)
    return "" if content is None else str(content)


def split_example(row: dict[str, Any]) -> tuple[list[dict[str, Any]] | str, str] | None:
    """(prompt, reference) of a row in a TRL format: the conversation up to the last assistant turn
    and that turn; a prompt/completion pair; the first half of a text's words and the rest.
    Preference and reward rows: a pair's prompt and its chosen response (explicit, or the prompt
    implicit in a conversation); an unpaired row's prompt and its completion when it is desirable
    (label true; an undesirable one is no reference); a prompt and its `answer` (GRPO's rows).
    None when the row has nothing to complete. A multimodal turn keeps its content list (its image
    parts are where the row's images go); the reference is the answer's text."""
    if isinstance(row.get("messages"), list):
        return _split_conversation(row["messages"])
    if "chosen" in row:
        if "prompt" not in row:  # implicit prompt: the chosen conversation up to its last answer
            return _split_conversation(row["chosen"]) if isinstance(row["chosen"], list) else None
        return split_example({"prompt": row["prompt"], "completion": row["chosen"]})
    if "label" in row and row["label"] is not True:
        return None
    if "prompt" in row and "completion" not in row and row.get("answer") is not None:
        return split_example({"prompt": row["prompt"], "completion": str(row["answer"])})
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(completion, list):
            completion = " ".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
        if isinstance(prompt, list):
            return [{"role": str(m.get("role")), "content": str(m.get("content", ""))} for m in prompt], str(completion)
        return str(prompt), str(completion)
    if isinstance(row.get("text"), str):
        words = row["text"].split()
        if len(words) < 2:
            return None
        half = len(words) // 2
        return " ".join(words[:half]), " ".join(words[half:])
    return None


def _split_conversation(turns: list[Any]) -> tuple[list[dict[str, Any]], str] | None:
    """The conversation up to its last assistant turn, and that turn's text."""
    messages = [m for m in turns if isinstance(m, dict)]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if not last:
        return None
    prompt = [{"role": str(m.get("role")),
               "content": m["content"] if isinstance(m.get("content"), list) else content_text(m.get("content"))}
              for m in messages[:last]]
    return prompt, content_text(messages[last].get("content"))


def prompt_text(prompt: list[dict[str, str]] | str) -> str:
    """The prompt as a person reads it: the last user turn of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [content_text(m["content"]) for m in prompt if m.get("role") == "user"]
    return users[-1] if users else " ".join(content_text(m["content"]) for m in prompt)


def encode(tokenizer: Any, prompt: list[dict[str, str]] | str) -> list[int]:
    """Token ids of a prompt: through the chat template (with the generation prompt) when the
    tokenizer has one, else the plain text."""
    if getattr(tokenizer, "chat_template", None):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        if len(ids) and isinstance(ids[0], (list, tuple)) or hasattr(ids, "ndim") and ids.ndim == 2:
            ids = ids[0]  # a processor's template answers a batch of one
        return [int(i) for i in ids]
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return [int(i) for i in tokenizer(text)["input_ids"]]


def model_inputs(tokenizer: Any, prompt: list[dict[str, Any]] | str, images: list[Any] | None,
                 device: Any) -> dict[str, Any]:
    """The generate() inputs of one prompt: its token ids, and with images (a vision-language
    model's processor) the pixel values and whatever else the processor makes of them."""
    import torch

    if images:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        loaded = [_image(image) for image in images]
        inputs = tokenizer(text=[text], images=[loaded], return_tensors="pt")
        return {key: value.to(device) for key, value in inputs.items() if hasattr(value, "to")}
    ids = torch.tensor([encode(tokenizer, prompt)], device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _image(image: Any) -> Any:
    """A PIL image from what a dataset row holds: an image already, a path, or {"bytes"/"path"}."""
    from PIL import Image

    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray)):
        import io

        return Image.open(io.BytesIO(image)).convert("RGB")
    if isinstance(image, (str, Path)):
        return Image.open(image).convert("RGB")
    return image


def generate(model: Any, tokenizer: Any, prompts: Sequence[list[dict[str, Any]] | str],
             max_new_tokens: int = SAMPLE_NEW_TOKENS, *, synced_gpus: bool | None = None,
             device: Any = None, images: Sequence[list[Any] | None] | None = None) -> list[str]:
    """Greedy completions, one prompt at a time (no padding to get wrong), without the prompt.

    `synced_gpus`: the model is sharded over the ranks (FSDP, ZeRO-3) and every rank calls this
    with the same prompts; each rank runs a forward until all have finished, because every forward
    gathers weights from all of them. None lets transformers decide (it turns this on for ZeRO-3
    and FSDP-managed modules in a multi-process world). `device`: where the inputs go, by default
    the first parameter's device (a sharded or offloaded model says it instead). `images`: each
    prompt's images, for a vision-language model (its processor is `tokenizer`)."""
    import torch

    was_training = model.training
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    outputs = []
    try:
        with torch.no_grad():
            text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds its tokenizer
            pad = text_tokenizer.pad_token_id if text_tokenizer.pad_token_id is not None else \
                text_tokenizer.eos_token_id
            for index, prompt in enumerate(prompts):
                inputs = model_inputs(tokenizer, prompt, images[index] if images else None, device)
                generated = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                           synced_gpus=synced_gpus, pad_token_id=pad)
                length = inputs["input_ids"].shape[1]
                outputs.append(text_tokenizer.decode(generated[0, length:], skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return outputs


def eval_samples(model: Any, tokenizer: Any, rows: Iterable[dict[str, Any]], count: int = SAMPLE_COUNT,
                 max_new_tokens: int = SAMPLE_NEW_TOKENS, *, scored: int = SCORED_COUNT,
                 synced_gpus: bool | None = None, device: Any = None) -> list[dict[str, Any]]:
    """The first `count` usable rows, generated with up to `max_new_tokens`: prompt, reference,
    output; then further short-answer rows, up to `scored` rows in all, generated with just enough
    tokens to hold their answer. Each row with a short reference carries `exact` (is_exact).
    `synced_gpus` and `device` as for `generate`. The rows picked depend on the rows and the
    tokenizer alone, so every rank of a sharded run generates the same prompts in step."""
    shown: list[tuple[list[dict[str, Any]] | str, str, list[Any] | None]] = []
    checked: list[tuple[list[dict[str, Any]] | str, str, list[Any] | None]] = []
    for row in rows:
        if len(shown) + len(checked) >= max(count, scored):
            break
        split = split_example(row)
        if split is None:
            continue
        example = (split[0], split[1], row.get("images") or None)
        if len(shown) < count:
            shown.append(example)
        elif short_answer(tokenizer, split[1]):
            checked.append(example)
    pairs = shown + checked
    outputs = generate(model, tokenizer, [prompt for prompt, _, _ in shown], max_new_tokens,
                       synced_gpus=synced_gpus, device=device, images=[images for _, _, images in shown])
    # An exact answer ends within its own length (plus the end token): longer output is wrong anyway.
    outputs += generate(model, tokenizer, [prompt for prompt, _, _ in checked], SHORT_ANSWER_TOKENS + 2,
                        synced_gpus=synced_gpus, device=device,
                        images=[images for _, _, images in checked]) if checked else []
    samples = []
    for (prompt, reference, _), output in zip(pairs, outputs, strict=True):
        sample: dict[str, Any] = {"prompt": prompt_text(prompt), "reference": reference, "output": output}
        if short_answer(tokenizer, reference):
            sample["exact"] = is_exact(output, reference)
        samples.append(sample)
    return samples


def short_answer(tokenizer: Any, reference: str) -> bool:
    """Whether `reference` is short enough for an exact match to be a fair score (a number, a word).
    A vision model's processor holds its text tokenizer (and takes images first when called)."""
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    return bool(reference.strip()) and len(text_tokenizer(reference, add_special_tokens=False)["input_ids"]) \
        <= SHORT_ANSWER_TOKENS


def is_exact(output: str, reference: str) -> bool:
    """The output is the reference, up to spaces around and between words (generation's decoding
    may differ there; the answer may not)."""
    return output.split() == reference.split()


def exact_rate(samples: list[dict[str, Any]]) -> tuple[int, int] | None:
    """(exact, scored) over the samples that carry `exact`; None when none do."""
    scored = [sample["exact"] for sample in samples if isinstance(sample.get("exact"), bool)]
    return (sum(scored), len(scored)) if scored else None


def exact_line(samples: list[dict[str, Any]]) -> str | None:
    """The summary's text for the exact-answer rate: "37/40 answers exact (92%), ..."."""
    rate = exact_rate(samples)
    if rate is None:
        return None
    exact, scored = rate
    return f"{exact}/{scored} answers exact ({exact / scored:.0%}), on examples the run never trained on"


def write_samples(path: Path, samples: list[dict[str, Any]], step: int) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(json.dumps({**sample, "step": step}) + "\n" for sample in samples),
                         encoding="utf-8")
    temporary.replace(path)


def read_samples(run_dir: Path) -> list[dict[str, Any]]:
    """samples.jsonl's rows with prompt, reference and output as text; [] when there is none."""
    try:
        lines = (run_dir / SAMPLES_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):  # damaged: the report and `runs` name it (runner.after.runs.run_problems)
        return []
    out = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("prompt", "reference", "output")):
            out.append(row)
    return out
