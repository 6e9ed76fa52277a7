"""The processor of a vision-language model, as TRL's vision path needs it.

`AutoProcessor` builds Qwen2-VL/Qwen2.5-VL processors with a video processor, and transformers'
video processors need torchvision. Where torchvision is missing (the PyPI wheel does not match
every torch build), the processor is assembled from its image processor (the PIL backend, no
torchvision), the tokenizer and the chat template: `ImageTextProcessor`, which is Qwen2.5-VL's
processor without the video part. It saves as a `Qwen2_5_VLProcessor`, so the saved files load
with `AutoProcessor` where torchvision is installed, and with `load_processor` anywhere.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

# Model types whose AutoProcessor carries a video processor (torchvision), and so the fallback.
_VIDEO_PROCESSOR_MODELS = ("qwen2_vl", "qwen2_5_vl")
_VIDEO_PROCESSOR_CLASSES = ("Qwen2VLProcessor", "Qwen2_5_VLProcessor")


def is_vision_model(path: str | Path) -> bool:
    """True when the model directory holds a multimodal config (vision_config) and a processor."""
    config = _read_json(Path(path) / "config.json")
    return "vision_config" in config


def load_processor(path: str | Path, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The model's processor: AutoProcessor, or the image-only assembly without torchvision."""
    from transformers import AutoProcessor

    folder = Path(path)
    model_type = _read_json(folder / "config.json").get("model_type")
    processor_class = _read_json(folder / "processor_config.json").get("processor_class")
    needs_video = model_type in _VIDEO_PROCESSOR_MODELS or processor_class in _VIDEO_PROCESSOR_CLASSES
    if needs_video and importlib.util.find_spec("torchvision") is None:
        return _image_text_processor(path, revision, trust_remote_code)
    # transformers picks the PIL image processor by itself where torchvision is missing.
    return AutoProcessor.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)


def _image_text_processor(path: str | Path, revision: str | None, trust_remote_code: bool) -> Any:
    from transformers import AutoImageProcessor, AutoTokenizer

    image_processor = AutoImageProcessor.from_pretrained(path, revision=revision, backend="pil",
                                                         trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    template_file = Path(path) / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else tokenizer.chat_template
    return image_text_processor_class()(image_processor=image_processor, tokenizer=tokenizer,
                                        chat_template=template)


def image_text_processor_class() -> type:
    """Qwen2.5-VL's processor without the video processor (built on first use: imports transformers)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageTextProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                     **kwargs: Any) -> None:
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

        def to_dict(self) -> dict[str, Any]:
            data = super().to_dict()
            data["processor_class"] = "Qwen2_5_VLProcessor"  # what the files are, wherever they load
            return data

    _CLASS = ImageTextProcessor
    return _CLASS


_CLASS: type | None = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
