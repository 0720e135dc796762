"""Resolve a model spec string to a loaded vision tower or causal LM.

A spec is one of: an offline preset name (``thinchat presets`` lists them), a local Hugging Face
directory, a ``.gguf`` file, or a hub id (``Qwen/Qwen2.5-0.5B-Instruct``). The rules are checked in that
order, so a local directory always wins over a hub id of the same spelling. Hub loading is the real
``from_pretrained`` path; offline it fails with a message that names the presets.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from thinchat.errors import ModelSpecError
from thinchat.model.presets import PRESETS, cache_root, check_gguf_architecture, materialize, preset_names

log = logging.getLogger(__name__)

SourceKind = Literal["preset", "dir", "gguf", "hub"]

#: Per tower family: which hidden layer feeds the projector and whether the CLS token is dropped.
#: CLIP and DINOv2 prepend a CLS token ("default" drops it); SigLIP has none ("full" keeps all).
#: The penultimate layer for all three, as LLaVA does for CLIP. For DINOv2 it matters more: in the last
#: block of ViT-S/14 two channels carry most of the norm (mean |x| ~20 vs < 6; token norm ~51 vs ~10 one
#: layer earlier, measured on thin-section images), so a linear projector on layer -1 sees little else.
TOWER_FEATURES: dict[str, tuple[int, str, int]] = {
    # model_type: (vision_feature_layer, vision_feature_select_strategy, num_additional_image_tokens)
    "clip_vision_model": (-2, "default", 1),
    "siglip_vision_model": (-2, "full", 0),
    "dinov2": (-2, "default", 1),
}


@dataclass(frozen=True)
class ModelSource:
    spec: str
    kind: SourceKind
    location: str
    """A local directory (preset cache, user dir, dequantised gguf cache) or a hub id."""


def _unknown(spec: str, want: str) -> ModelSpecError:
    names = preset_names(want)
    close = difflib.get_close_matches(spec, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ModelSpecError(
        f"unknown {want} model '{spec}': not an offline preset, an existing directory, a .gguf file, or a hub id "
        f"(org/name).{hint} Offline {want} presets: {', '.join(names)}."
    )


def classify(spec: str, want: Literal["vision", "lm"]) -> ModelSource:
    """Decide what ``spec`` names, without loading anything heavy."""
    if spec in PRESETS:
        preset = PRESETS[spec]
        if preset.kind != want:
            raise ModelSpecError(
                f"preset '{spec}' is a {preset.kind} model, but a {want} model is needed here; "
                f"{want} presets: {', '.join(preset_names(want))}"
            )
        return ModelSource(spec, "preset", spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSpecError(
                f"{path}: directory has no config.json; expected a Hugging Face model directory"
            )
        return ModelSource(spec, "dir", str(path))
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelSpecError(f"{path}: GGUF file not found")
        if want != "lm":
            raise ModelSpecError(f"{path}: GGUF files hold language models; a vision tower is needed here")
        return ModelSource(spec, "gguf", str(path))
    looks_like_path = spec.startswith((".", "/", "~")) or path.suffix in (".safetensors", ".bin", ".onnx")
    if looks_like_path:
        raise ModelSpecError(f"{path}: no such file or directory")
    if spec.count("/") == 1 and all(spec.split("/")):
        return ModelSource(spec, "hub", spec)
    raise _unknown(spec, want)


def local_directory(source: ModelSource) -> str:
    """A directory (or hub id) that ``from_pretrained`` can read, materialising caches as needed."""
    if source.kind == "preset":
        return str(materialize(source.location))
    if source.kind == "gguf":
        return str(_dequantised_gguf(Path(source.location)))
    return source.location


def _dequantised_gguf(gguf_path: Path) -> Path:
    from thinchat.model.presets import save_gguf_as_safetensors

    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{gguf_path.stem}-{key}"
    if not (target / "config.json").is_file():
        check_gguf_architecture(gguf_path)
        target.mkdir(parents=True, exist_ok=True)
        save_gguf_as_safetensors(gguf_path, target)
    return target


def _hub_failure(source: ModelSource, exc: Exception, want: str) -> ModelSpecError:
    return ModelSpecError(
        f"could not load '{source.spec}' from the Hugging Face hub ({type(exc).__name__}: {exc}). "
        f"If this machine is offline, use an offline {want} preset ({', '.join(preset_names(want))}) "
        "or a local directory / .gguf file."
    )


def load_language_model(spec: str, dtype=None):
    """Return ``(causal_lm, tokenizer)`` for an LM spec."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = classify(spec, "lm")
    location = local_directory(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype or torch.float32)
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_failure(source, exc, "lm") from exc
        raise ModelSpecError(f"{location}: could not load a causal language model ({exc})") from exc
    return model, tokenizer


def load_vision_tower(spec: str, image_size: int | None = None, dtype=None):
    """Return ``(vision_model, image_processor)``; ``image_size`` resizes inputs where the tower allows it."""
    import torch
    from transformers import AutoConfig, AutoImageProcessor, CLIPVisionModel, Dinov2Model, SiglipVisionModel

    source = classify(spec, "vision")
    location = local_directory(source)
    try:
        config = AutoConfig.from_pretrained(location)
        image_processor = AutoImageProcessor.from_pretrained(location)
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_failure(source, exc, "vision") from exc
        raise ModelSpecError(f"{location}: could not load a vision model config ({exc})") from exc
    classes = {
        "clip": CLIPVisionModel,
        "clip_vision_model": CLIPVisionModel,
        "siglip": SiglipVisionModel,
        "siglip_vision_model": SiglipVisionModel,
        "dinov2": Dinov2Model,
    }
    if config.model_type not in classes:
        raise ModelSpecError(
            f"'{spec}' is a {config.model_type} model; supported vision towers: CLIP, SigLIP, DINOv2"
        )
    model = classes[config.model_type].from_pretrained(location, dtype=dtype or torch.float32)
    if image_size is not None:
        set_image_size(model.config, image_processor, image_size, spec)
    return model, image_processor


def set_image_size(vision_config, image_processor, image_size: int, spec: str = "") -> None:
    """Resize inputs to ``image_size``; only DINOv2 interpolates its position embeddings inside Llava."""
    patch = vision_config.patch_size
    if image_size < patch or image_size % patch:
        raise ModelSpecError(
            f"--image-size {image_size} must be a positive multiple of the patch size {patch} "
            f"({patch}, {2 * patch}, {3 * patch}, ...)"
        )
    if vision_config.model_type == "dinov2":
        image_processor.size = {"shortest_edge": image_size}
        image_processor.crop_size = {"height": image_size, "width": image_size}
        return
    if image_size != vision_config.image_size:
        raise ModelSpecError(
            f"{spec or vision_config.model_type}: this tower works at its native {vision_config.image_size} px only; "
            f"drop --image-size or pass {vision_config.image_size}"
        )
