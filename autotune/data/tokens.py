"""Token counting with a model's own tokenizer and chat template, without importing transformers.

transformers imports torch even for its tokenizers, which would make `llmwizard plan` slow. A
model directory's `tokenizer.json` loads with the `tokenizers` library alone, and its chat template
renders with jinja2 the way transformers renders it (sandboxed, trim_blocks, lstrip_blocks, the
`{% generation %}` tag accepted), so the count matches what training tokenizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmwizard.autotune.data.dataset import TokenCounter, content_text
from llmwizard.autotune.errors import UserError


class ModelTokenCounter(TokenCounter):
    exact = True

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        self.name = f"{model_dir.name} tokenizer"
        try:
            self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 (the tokenizers library raises a bare Exception for a bad file)
            raise UserError(f"{model_dir / 'tokenizer.json'} is not a tokenizer the tokenizers library reads: "
                            f"{str(exc)[:200]}", title="Model",
                            fix="Restore the model's tokenizer.json (save_pretrained writes it).") from None
        config = _read_json(model_dir / "tokenizer_config.json")
        self._special = {key: _token_text(config.get(key)) for key in
                         ("bos_token", "eos_token", "pad_token", "unk_token")}
        self._template_file = model_dir / "chat_template.jinja"
        if not self._template_file.is_file():
            self._template_file = model_dir / "tokenizer_config.json"
        try:
            self._template = _chat_template(model_dir, config)
        except Exception as exc:  # noqa: BLE001 (jinja2's TemplateSyntaxError and its kin)
            raise UserError(f"The chat template in {self._template_file} does not parse: {exc}", title="Model",
                            fix="Restore the model's chat template.") from None

    def count(self, row: dict[str, Any]) -> int:
        if "messages" in row:
            if self._template is None:
                text = "\n".join(content_text(m["content"]) for m in row["messages"])
                return len(self._tokenizer.encode(text).ids) + 1
            return self._rendered_length(row["messages"], add_generation_prompt=False)
        text = row["text"] if "text" in row else row["prompt"] + row["completion"]
        # TRL appends the EOS token to plain text and completions.
        return len(self._tokenizer.encode(text).ids) + 1

    def count_prompt(self, prompt: str | list[dict[str, Any]]) -> int:
        """As TRL's preference and GRPO trainers tokenize a prompt: text as it is (no EOS), chat turns
        with the template's generation prompt."""
        if isinstance(prompt, str):
            return len(self._tokenizer.encode(prompt).ids)
        if self._template is None:
            return len(self._tokenizer.encode("\n".join(content_text(m["content"]) for m in prompt)).ids)
        return self._rendered_length(prompt, add_generation_prompt=True)

    def _rendered_length(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool) -> int:
        try:
            rendered = self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                             **self._special)
        except Exception as exc:  # noqa: BLE001 (a template's raise_exception, or jinja2's errors)
            raise UserError(f"The chat template in {self._template_file} refuses a row of the dataset: {exc}",
                            title="Dataset", fix="Make the rows fit the model's chat template (some refuse a "
                            "system message, or turns that do not alternate), or pick another model.") from None
        return len(self._tokenizer.encode(rendered, add_special_tokens=False).ids)


def counter_for(model_dir: Path | None) -> TokenCounter:
    """The exact counter when the model's tokenizer is on disk, else the 4-characters estimate."""
    if model_dir is not None and (model_dir / "tokenizer.json").is_file():
        return ModelTokenCounter(model_dir)
    return TokenCounter()


def _read_json(path: Path) -> dict[str, Any]:
    """The file's settings; {} when there is none. One that is there but not a JSON object is
    refused: transformers would fail on it when the run loads the tokenizer."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"{path} is not readable JSON ({type(exc).__name__}).", title="Model",
                        fix="Restore the model's tokenizer files (save_pretrained writes them).") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, not an object of settings.", title="Model",
                        fix="Restore the model's tokenizer files (save_pretrained writes them).")
    return data


def _token_text(value: Any) -> str:
    if isinstance(value, dict):  # a serialised AddedToken
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


def _chat_template(model_dir: Path, config: dict[str, Any]) -> Any:
    source: Any = None
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        source = jinja_file.read_text(encoding="utf-8")
    else:
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: the default one trains
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default") or next(iter(named.values()), None)
    if not source:
        return None
    return _environment().from_string(source)


def _environment() -> Any:
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """Accepts `{% generation %}...{% endgeneration %}` and renders its body unchanged."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    def strftime_now(fmt: str) -> str:
        from datetime import datetime

        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = lambda value, **kw: json.dumps(value, ensure_ascii=False, **kw)
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env
