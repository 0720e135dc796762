"""``thinchat data import-clipcap``: ThinGPT/ClipCap feature pickles -> conversation JSON + safetensors.

ThinGPT's ``process_flickr.py`` writes ``pickle.dump([caption_list, image_id2embed])``: ``caption_list``
is a list of ``(image_id, caption)`` and ``image_id2embed`` maps each id to a torch tensor of shape
(1, 512) (pooled CLIP ViT-B/32 image embeddings). A pickle can run any code on load, so this reads it with
an unpickler that resolves only the globals a tensor pickle needs and refuses everything else, naming the
forbidden global. The storage bytes inside (``torch.storage._load_from_bytes``) are loaded with
``torch.load(weights_only=True)`` rather than torch's unrestricted legacy loader.

Output in ``out_dir``: ``clip_embeddings.safetensors`` (key = image id as a string, float32 tensor as
stored, usually (1, 512)) and ``conversations.json`` (one entry per caption; the human turn has one
``<image>`` placeholder standing for the embedding named by ``image_embedding``; no ``image`` key).
"""

from __future__ import annotations

import io
import json
import pickle
import random
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_tools.lexicon import is_chinese
from data_tools.turns import build_conversation, load_questions
from thinchat.errors import DataFormatError

#: (module, name) pairs a pickled list/dict of CPU tensors may reference.
ALLOWED_GLOBALS = frozenset(
    {
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor"),
        ("torch.storage", "_load_from_bytes"),
        ("collections", "OrderedDict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "dict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }
)


class ForbiddenPickleError(DataFormatError):
    """The pickle references a global outside the allow-list (it could run code on load)."""


def _load_storage_bytes(data: bytes) -> Any:
    import torch

    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        detail = [line for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        raise ForbiddenPickleError(
            "refusing to load: a tensor's storage bytes hold more than tensor data "
            f"({detail[0].strip() if detail else 'rejected by torch.load(weights_only=True)'})"
        ) from exc


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise ForbiddenPickleError(
                f"{self.source}: refusing to load: the pickle references the global {module}.{name}, which is "
                f"not needed for tensors and could run code; only ClipCap feature pickles (captions + CLIP "
                f"embedding tensors) are accepted"
            )
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _load_storage_bytes
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenPickleError(f"{self.source}: refusing to load: unexpected persistent id {pid!r}")


def load_clipcap_pickle(path: str | Path) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Safely read ``[caption_list, image_id2embed]``; ids are returned as strings."""
    source = Path(path)
    if not source.is_file():
        raise DataFormatError(f"{source}: file not found")
    try:
        with source.open("rb") as handle:
            data = RestrictedUnpickler(handle, str(source)).load()
    except ForbiddenPickleError as exc:
        if str(exc).startswith(str(source)):
            raise
        raise ForbiddenPickleError(f"{source}: {exc}") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        raise DataFormatError(f"{source}: not a readable ClipCap feature pickle ({exc})") from exc
    if not (isinstance(data, (list, tuple)) and len(data) == 2 and isinstance(data[1], dict)):
        raise DataFormatError(
            f"{source}: expected [caption_list, image_id2embed] as written by process_flickr.py"
        )
    captions_raw, embeds_raw = data
    captions: list[tuple[str, str]] = []
    for index, item in enumerate(captions_raw):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], str)):
            raise DataFormatError(f"{source}: caption_list[{index}] is not an (image_id, caption) pair")
        captions.append((str(item[0]), item[1]))
    return captions, {str(k): v for k, v in embeds_raw.items()}


def import_clipcap(
    path: str | Path, out_dir: str | Path, seed: int = 0, lang: str = "auto"
) -> dict[str, Any]:
    """Write ``conversations.json`` + ``clip_embeddings.safetensors`` to ``out_dir``; return a summary."""
    import torch
    from safetensors.torch import save_file

    captions, embeds = load_clipcap_pickle(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in embeds.items():
        if not isinstance(value, torch.Tensor):
            raise DataFormatError(
                f"{path}: embedding of {key!r} is {type(value).__name__}, expected a tensor"
            )
        tensors[key] = value.detach().to(torch.float32).clone().contiguous()  # no shared storage
    pools = load_questions()
    entries, skipped = [], []
    counts: dict[str, int] = {}
    for line, (image_id, caption) in enumerate(
        tqdm(captions, desc="import-clipcap", unit="caption"), start=1
    ):
        text = caption.strip()
        if image_id not in tensors:
            skipped.append(
                {"file": str(path), "line": line, "reason": f"no embedding for image id {image_id!r}"}
            )
            continue
        if not text:
            skipped.append({"file": str(path), "line": line, "reason": "empty caption"})
            continue
        counts[image_id] = counts.get(image_id, 0) + 1
        entry_id = f"{image_id}_{counts[image_id]}"
        code = lang if lang in ("zh", "en") else ("zh" if is_chinese(text) else "en")
        rng = random.Random(f"{seed}\0{entry_id}")
        entries.append(
            {
                "id": entry_id,
                "image_embedding": image_id,
                "conversations": build_conversation(text, code, 1, rng, pools=pools),
                "lang": code,
            }
        )
    assert len(captions) == len(entries) + len(skipped)
    save_file(tensors, str(out / "clip_embeddings.safetensors"))
    (out / "conversations.json").write_text(
        json.dumps(entries, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    shapes = sorted({tuple(t.shape) for t in tensors.values()})
    return {
        "rows_in": len(captions),
        "rows_out": len(entries),
        "rows_skipped": len(skipped),
        "skipped": skipped,
        "embeddings": len(tensors),
        "embedding_shapes": [list(s) for s in shapes],
        "outputs": {
            "conversations": str(out / "conversations.json"),
            "embeddings": str(out / "clip_embeddings.safetensors"),
        },
    }
