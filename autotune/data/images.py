"""Images in a dataset: where they are, whether they open, their sizes, and their tokens.

A vision-language row is chat `messages` whose content may hold image parts
(`{"type": "image"}`) beside text parts, plus an `images` column (or one `image`): file paths
(relative to the dataset file or absolute), raw bytes, or a datasets `Image` value
(`{"bytes": ..., "path": ...}`, as Parquet files written by datasets store it). Text-only content
is allowed too: TRL then puts the row's images before the first user message.

Image tokens follow the model's processor: Qwen2-VL/Qwen2.5-VL resize each image to a multiple of
patch x merge pixels within a pixel budget (`smart_resize`) and give one token per merged patch;
Gemma 3 gives a fixed count per image (`mm_tokens_per_image`, 256). Pillow reads only the image
headers here; no torch.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.model.model_types import VisionSpec

IMAGE_COLUMNS = ("images", "image")
# Qwen2-VL's image processor defaults (min_pixels, max_pixels) when a model folder has no config.
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 28 * 28 * 16384
# The largest image decoded: width x height x channels (at least the 3 of the RGB the processor
# converts every image to). The processor decodes an image whole before it shrinks it to the
# pixels the model takes, and its working set is about four times the decoded bytes (measured on
# the Qwen2-VL processor: 12.5 bytes per pixel), in every data loader worker, outside the memory
# estimate. 256 MiB is Pillow's own decompression-bomb threshold for RGB (89.5 million pixels).
MAX_DECODED_BYTES = 256 * 1024**2
# Above this decoded size the plan says what the decoding costs in host memory.
LARGE_DECODED_BYTES = 64 * 1024**2


class ImageRowError(ValueError):
    """A row whose images cannot be used; the message names what is wrong."""


def has_images(columns: Any) -> bool:
    return any(column in IMAGE_COLUMNS for column in columns)


def row_images(row: dict[str, Any]) -> list[Any]:
    """The row's image references as a list (an `image` column holds one)."""
    if "images" in row:
        found = row["images"]
        if found is None:
            return []
        if not isinstance(found, list):
            raise ImageRowError("`images` must be a list of image paths or bytes")
        return found
    return [] if row.get("image") is None else [row["image"]]


def placeholders(messages: list[dict[str, Any]]) -> int:
    """Image parts in the messages (a text-only conversation has none)."""
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for part in m["content"] if isinstance(part, dict) and part.get("type") == "image")


def normalize_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every message's content as a list of {type, text} parts (one Arrow type for all rows)."""
    out = []
    for message in messages:
        content = message.get("content")
        parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            parts.append({"type": "text", "text": content})
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
                    raise ImageRowError(f"content parts must be {{'type': 'text' | 'image'}}, got {part!r:.60}")
                if part["type"] == "image":
                    parts.append({"type": "image", "text": None})
                else:
                    if not isinstance(part.get("text"), str):
                        raise ImageRowError("a text part has no `text` string")
                    parts.append({"type": "text", "text": part["text"]})
        else:
            raise ImageRowError(f"`content` must be a string or a list of parts, not {type(content).__name__}")
        out.append({"role": message["role"], "content": parts})
    return out


def resolve_image(ref: Any, base: Path | None) -> Any:
    """A path made absolute against the dataset's folder; bytes kept as datasets' Image value."""
    if isinstance(ref, dict):
        if ref.get("bytes"):
            return {"bytes": ref["bytes"], "path": None}
        ref = ref.get("path")
    if isinstance(ref, (bytes, bytearray)):
        return {"bytes": bytes(ref), "path": None}
    if not isinstance(ref, str) or not ref:
        raise ImageRowError(f"an image must be a file path or bytes, not {type(ref).__name__}")
    path = Path(ref).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_file():
        raise ImageRowError(f"image file {ref} not found" + (f" (looked in {path.parent})" if base else ""))
    return str(path.resolve())


def image_size(image: Any) -> tuple[int, int]:
    """(width, height) from the image's header, before anything is decoded.

    The one check every image passes, at plan time and in the training entry: an unreadable image,
    or one whose decoded size passes MAX_DECODED_BYTES, raises ImageRowError naming it and its size.
    Pillow's decompression-bomb warning gives way to that refusal, its error becomes one."""
    from PIL import Image, UnidentifiedImageError

    source = io.BytesIO(image["bytes"]) if isinstance(image, dict) else image
    name = "image bytes" if isinstance(image, dict) else f"image file {image}"
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89.5 million pixels; the bound below refuses such an image by its size.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                width, height = opened.size
                channels = len(opened.getbands())
    except Image.DecompressionBombError as exc:  # twice Pillow's limit: it gives no size, only pixels
        raise ImageRowError(f"{name} is too large to decode safely ({str(exc).split(', could')[0]}); "
                            f"{_DOWNSCALE}") from None
    except (UnidentifiedImageError, OSError, ValueError, TypeError) as exc:
        raise ImageRowError(f"{name} is not a readable image ({type(exc).__name__})") from None
    if width < 1 or height < 1:
        raise ImageRowError(f"{name} is empty ({width}x{height})")
    decoded = decoded_bytes(width, height, channels)
    if decoded > MAX_DECODED_BYTES:
        raise ImageRowError(
            f"{name} is {width}x{height}: {decoded / 1024**2:,.0f} MiB decoded, more than the "
            f"{MAX_DECODED_BYTES // 1024**2} MiB llmwizard decodes (the processor decodes the whole image, "
            f"about four times that in host memory, before it shrinks it for the model); {_DOWNSCALE}")
    return width, height


_DOWNSCALE = ("downscale it (e.g. to at most 4096 pixels a side; the model sees far fewer) "
              "or remove the row")


def decoded_bytes(width: int, height: int, channels: int = 3) -> int:
    """Bytes of the image decoded: width x height x channels, at least RGB's 3 (the processor
    converts every image to RGB)."""
    return width * height * max(3, channels)


# ----------------------------------------------------------------------------- image tokens

@dataclass(frozen=True)
class ImageTokenRule:
    """How many tokens one image of a given size becomes under a model's processor."""

    kind: str                  # "qwen2_5_vl" or "siglip"
    patch_size: int = 14
    merge_size: int = 2
    min_pixels: int = QWEN_MIN_PIXELS
    max_pixels: int = QWEN_MAX_PIXELS
    tokens_per_image: int = 0  # fixed count (Gemma 3)
    extra_tokens: int = 0      # markers the processor adds around each image beyond the template's one

    @property
    def description(self) -> str:
        if self.kind == "siglip":
            return f"{self.tokens_per_image} tokens per image (fixed) and {self.extra_tokens} around it"
        return (f"one token per {self.merge_size}x{self.merge_size} patches of {self.patch_size} px "
                f"({self.min_pixels:,}-{self.max_pixels:,} pixels per image)")

    def tokens(self, width: int, height: int) -> int:
        if self.kind == "siglip":
            return self.tokens_per_image + self.extra_tokens
        h, w = smart_resize(height, width, self.patch_size * self.merge_size, self.min_pixels, self.max_pixels)
        return (h // self.patch_size) * (w // self.patch_size) // self.merge_size**2 + self.extra_tokens

    def patches(self, width: int, height: int) -> int:
        """Patches the vision tower sees for one image (before any merge)."""
        if self.kind == "siglip":
            return self.tokens_per_image  # placeholder, replaced by the tower's own grid in the memory model
        h, w = smart_resize(height, width, self.patch_size * self.merge_size, self.min_pixels, self.max_pixels)
        return (h // self.patch_size) * (w // self.patch_size)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize (transformers image_processing_qwen2_vl.smart_resize): sides rounded to
    multiples of `factor`, the area brought inside [min_pixels, max_pixels], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise ImageRowError(f"an image of {width}x{height} is more than 200 times wider than high (or the reverse)")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def token_rule(vision: VisionSpec | None, model_dir: Path | None = None) -> ImageTokenRule | None:
    """The image-token rule of a model: its processor settings on disk, else the family defaults."""
    if vision is None:
        return None
    if vision.kind == "siglip":
        # Gemma 3's processor replaces the template's one <start_of_image> with "\n\n<start_of_image>"
        # + mm_tokens_per_image soft tokens + "<end_of_image>\n\n": 4 tokens around them with Gemma's
        # tokenizer ("\n\n" is one), or what the model's own tokenizer makes of them.
        markers = _gemma3_markers(model_dir) if model_dir is not None else None
        return ImageTokenRule("siglip", patch_size=vision.patch_size, merge_size=1,
                              tokens_per_image=vision.tokens_per_image, extra_tokens=4 if markers is None else markers)
    settings, origin = _processor_settings(model_dir) if model_dir is not None else ({}, "")
    origin = origin or "the model's vision_config"
    size = settings.get("size")
    size = size if isinstance(size, dict) else {}
    chosen = {
        "patch_size": _setting(settings, ("patch_size",), vision.patch_size),
        "merge_size": _setting(settings, ("merge_size",), vision.merge_size),
        "min_pixels": _setting(settings, ("min_pixels",), _setting(size, ("shortest_edge",), QWEN_MIN_PIXELS)),
        "max_pixels": _setting(settings, ("max_pixels",), _setting(size, ("longest_edge",), QWEN_MAX_PIXELS)),
    }
    for key, value in chosen.items():
        if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _PROCESSOR_CEILINGS[key]):
            raise UserError(f"{origin}: `{key}` is {value!r}; it must be an integer from 1 to "
                            f"{_PROCESSOR_CEILINGS[key]:,}.", title="Model processor", fix=_PROCESSOR_FIX)
    if chosen["min_pixels"] > chosen["max_pixels"]:
        raise UserError(f"{origin}: `min_pixels` {chosen['min_pixels']:,} is more than `max_pixels` "
                        f"{chosen['max_pixels']:,}.", title="Model processor", fix=_PROCESSOR_FIX)
    return ImageTokenRule("qwen2_5_vl", **chosen)


# What a processor config may ask for: the config ceilings (param_counts.CONFIG_CEILINGS) for the
# patch and merge sizes, and for the pixel budget (Qwen2-VL's is 12.8M) what the decode bound lets through.
_PROCESSOR_CEILINGS = {"patch_size": 100_000, "merge_size": 1_024, "min_pixels": MAX_DECODED_BYTES // 3,
                       "max_pixels": MAX_DECODED_BYTES // 3}
_PROCESSOR_FIX = "Restore the model's preprocessor_config.json (save_pretrained writes it with the processor)."


def _setting(settings: dict[str, Any], keys: tuple[str, ...], default: Any) -> Any:
    """The first of `keys` the settings give (null counts as not given), else `default`."""
    return next((settings[key] for key in keys if settings.get(key) is not None), default)


def _gemma3_markers(model_dir: Path) -> int | None:
    """Tokens of "\n\n<start_of_image>" + "<end_of_image>\n\n" under the model's tokenizer
    (tokenizers alone, no torch); None without tokenizer files that name the two tokens."""
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    markers = []
    for key in ("boi_token", "eoi_token"):
        token = config.get(key) if isinstance(config, dict) else None
        token = token.get("content") if isinstance(token, dict) else token  # a serialised AddedToken
        if not isinstance(token, str) or not token:
            return None
        markers.append(token)
    if not (model_dir / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return len(tokenizer.encode(f"\n\n{markers[0]}{markers[1]}\n\n", add_special_tokens=False).ids)


def _processor_settings(model_dir: Path) -> tuple[dict[str, Any], str]:
    """The image processor's settings and the file they come from ({} when the folder has none).
    A file that is there but not JSON is refused: the processor would fail on it in the run."""
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise UserError(f"{path} is not readable JSON ({type(exc).__name__}).", title="Model processor",
                            fix=_PROCESSOR_FIX) from None
        if key is not None:
            data = data.get(key) if isinstance(data, dict) else None
        if isinstance(data, dict):
            return data, str(path)
    return {}, ""


def check_row(row: dict[str, Any], base: Path | None, measure: bool,
              on_size: Callable[[int, int], None] | None = None) -> list[Any]:
    """Resolve and check one row's images; returns them resolved (paths absolute, bytes wrapped).

    Raises ImageRowError for a missing file, an unreadable image (when `measure`: the header is
    read) or more image placeholders in the messages than images."""
    refs = row_images(row)
    wanted = placeholders(row.get("messages") or [])
    if wanted > len(refs):
        raise ImageRowError(f"the messages have {wanted} image placeholders but the row has "
                            f"{len(refs)} image{'s' if len(refs) != 1 else ''}")
    if 0 < wanted < len(refs):
        raise ImageRowError(f"the row has {len(refs)} images but the messages place only {wanted}")
    resolved = [resolve_image(ref, base) for ref in refs]
    if measure:
        for image in resolved:
            width, height = image_size(image)
            if on_size is not None:
                on_size(width, height)
    return resolved
