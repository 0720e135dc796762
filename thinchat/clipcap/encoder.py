"""The tower that turns a new image into the pooled embedding a ClipCap prefix was trained on.

ThinGPT's embeddings are OpenAI CLIP's ``encode_image``: the ViT's pooled CLS state through the visual
projection, which is ``CLIPVisionModelWithProjection(...).image_embeds`` in transformers. The checkpoint
records the tower's hub id (``openai/clip-vit-base-patch32`` for ThinGPT's pickles) or a local
directory; the tower is loaded on first use, so stored embeddings never need it and a machine without
network can still evaluate and caption imported data. When it cannot be loaded the error says so and
what still works.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thinchat.errors import ImageError, ModelSpecError

#: The tower of ThinGPT's ``process_flickr.py`` (CLIP ViT-B/32, 512-d embeddings).
THINGPT_ENCODER = "openai/clip-vit-base-patch32"


def _unavailable(spec: str | None, reason: str) -> ModelSpecError:
    return ModelSpecError(
        f"this ClipCap checkpoint cannot encode new images: {reason}. Its embeddings come from "
        f"{spec or 'an unrecorded tower'}; with network access (or a local copy of that tower, named at "
        "import with --encoder DIR) new images work. Imported embeddings need no tower: "
        "`thinchat eval --data IMPORT_DIR/conversations.json`"
    )


class PooledImageEncoder:
    """``encoder(images) -> (n, width)`` pooled, projected CLIP embeddings; the tower loads lazily."""

    def __init__(self, spec: str | None, width: int, device: Any = None) -> None:
        self.spec, self.width, self.device = spec, width, device
        self._model: Any = None
        self._processor: Any = None

    def _load(self) -> None:
        import torch
        from transformers import AutoImageProcessor, CLIPVisionModelWithProjection

        spec = self.spec
        if not spec:
            raise _unavailable(spec, "the import did not record which tower made the embeddings")
        local = Path(spec).expanduser()
        is_hub_id = spec.count("/") == 1 and not local.exists() and not spec.startswith((".", "/", "~"))
        if not local.is_dir() and not is_hub_id:
            raise _unavailable(spec, f"'{spec}' is neither a CLIP hub id nor a local directory")
        location = str(local) if local.is_dir() else spec
        try:
            try:  # the local Hugging Face cache first: no network round trips when the tower is there
                processor = AutoImageProcessor.from_pretrained(location, local_files_only=True)
                model = CLIPVisionModelWithProjection.from_pretrained(
                    location, dtype=torch.float32, local_files_only=True
                )
            except OSError:
                if not is_hub_id:
                    raise
                processor = AutoImageProcessor.from_pretrained(location)
                model = CLIPVisionModelWithProjection.from_pretrained(location, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            where = "not found locally and the Hugging Face hub is unreachable" if is_hub_id else str(exc)
            raise _unavailable(spec, f"'{spec}' could not be loaded ({where})") from exc
        if int(model.config.projection_dim) != self.width:
            raise ModelSpecError(
                f"{spec} gives {model.config.projection_dim}-wide embeddings but this ClipCap checkpoint was "
                f"trained on {self.width}-wide ones; use the tower the training embeddings came from"
            )
        self._model = model.eval().to(self.device) if self.device else model.eval()
        self._processor = processor

    def __call__(self, images: Sequence[Any]) -> Any:
        import torch

        if self._model is None:
            self._load()
        try:
            pixels = self._processor(images=list(images), return_tensors="pt")["pixel_values"]
        except (OSError, ValueError, TypeError) as exc:
            raise ImageError(f"could not preprocess the image(s) for {self.spec}: {exc}") from exc
        with torch.inference_mode():
            out = self._model(pixel_values=pixels.to(self._model.device))
        return out.image_embeds.float()
