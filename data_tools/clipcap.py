"""``thinchat data import-clipcap``: ThinGPT/ClipCap feature pickles -> conversation JSON + safetensors.

ThinGPT's ``process_flickr.py`` writes ``pickle.dump([caption_list, image_id2embed])``: ``caption_list``
is a list of ``(image_id, caption)`` and ``image_id2embed`` maps each id to a torch tensor of shape
(1, 512) (pooled CLIP ViT-B/32 image embeddings). A pickle can run any code on load, so this reads it with
an unpickler that resolves only the globals a tensor pickle needs and refuses everything else, naming the
forbidden global. The storage bytes inside (``torch.storage._load_from_bytes``) are loaded with
``torch.load(weights_only=True)`` rather than torch's unrestricted legacy loader.

A pickle also says how big each tensor is (size and stride) independently of the bytes it stores: a
435-byte file can describe a stride-0 view of 2^28 elements, which copying would blow up to 1 GB. Each
rebuilt tensor is therefore checked against its own storage (no element without a stored byte behind
it), and the running total of tensor bytes against the file's size, before anything is materialised.

Output in ``out_dir``: ``clip_embeddings.safetensors`` (key = image id as a string, float32 tensor as
stored, usually (1, 512)), ``conversations.json`` (one entry per caption; the human turn has one
``<image>`` placeholder standing for the embedding named by ``image_embedding``; no ``image`` key) and
``clipcap_import.json`` (the tower that made the embeddings, for encoding new images). With ``split``
or ``test_ids`` the three files go to ``out_dir/train``, ``out_dir/val``, ``out_dir/test`` instead,
split by image so every caption of an image lands in the same part.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import random
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_tools.turns import build_conversation
from thinchat.domain.language import language_of
from thinchat.domain.questions import load_questions
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
    """The pickle references a global outside the allow-list (it could run code on load).

    ``source`` is the file, when the raiser knows it; the message then starts with it.
    """

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(f"{source}: {message}" if source else message)
        self.source = source


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
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS`, with tensor sizes bounded by the file's bytes."""

    def __init__(self, file: io.BufferedIOBase, source: str, file_bytes: int) -> None:
        super().__init__(file)
        self.source = source
        self.file_bytes = file_bytes
        self.tensor_bytes = 0

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise ForbiddenPickleError(
                f"refusing to load: the pickle references the global {module}.{name}, which is "
                f"not needed for tensors and could run code; only ClipCap feature pickles (captions + CLIP "
                f"embedding tensors) are accepted",
                source=self.source,
            )
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _load_storage_bytes
        if module == "torch._utils":
            return self._checked_rebuild(super().find_class(module, name))
        return super().find_class(module, name)

    def _checked_rebuild(self, rebuild: Any) -> Any:
        """``torch._utils._rebuild_tensor(_v2)`` that first checks size and stride against the bytes stored."""

        def checked(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> Any:
            shape_ok = (
                isinstance(size, tuple)
                and isinstance(stride, tuple)
                and len(size) == len(stride)
                and all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))
            )
            untyped = getattr(storage, "_untyped_storage", None)
            if not shape_ok or untyped is None:
                raise DataFormatError(
                    f"{self.source}: a tensor has a malformed size, stride or storage; not a feature pickle"
                )
            numel = math.prod(size)
            item = storage.dtype.itemsize
            stored = untyped.nbytes() // item - offset
            if numel > max(stored, 0):
                raise DataFormatError(
                    f"{self.source}: a tensor claims {numel} elements but its storage holds {max(stored, 0)} "
                    "(a stride-0 or overlapping view); refusing to expand it"
                )
            self.tensor_bytes += numel * item
            if self.tensor_bytes > self.file_bytes:
                raise DataFormatError(
                    f"{self.source}: the tensors add up to {self.tensor_bytes} bytes, more than the "
                    f"{self.file_bytes}-byte file can hold; refusing to expand them"
                )
            return rebuild(storage, offset, size, stride, *rest)

        return checked

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenPickleError(f"refusing to load: unexpected persistent id {pid!r}", source=self.source)


def load_clipcap_pickle(path: str | Path) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Safely read ``[caption_list, image_id2embed]``; ids are returned as strings."""
    source = Path(path)
    if not source.is_file():
        raise DataFormatError(f"{source}: file not found")
    try:
        with source.open("rb") as handle:
            data = RestrictedUnpickler(handle, str(source), source.stat().st_size).load()
    except ForbiddenPickleError as exc:
        if exc.source is not None:
            raise
        raise ForbiddenPickleError(str(exc), source=str(source)) from exc
    except DataFormatError:
        raise
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


def parse_split(text: str | None, pair: str = "test") -> tuple[float, float, float] | None:
    """``"0.9,0.1"`` (train,test; train,val with ``pair="val"``) or ``"0.8,0.1,0.1"`` (train,val,test)."""
    if text is None:
        return None
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError as exc:
        raise DataFormatError(f"--split {text!r}: expected ratios like 0.9,0.1 or 0.8,0.1,0.1") from exc
    if len(parts) == 2:
        parts = [parts[0], parts[1], 0.0] if pair == "val" else [parts[0], 0.0, parts[1]]
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0 or parts[0] <= 0:
        raise DataFormatError(f"--split {text!r}: expected 2 or 3 non-negative ratios (train first, > 0)")
    total = sum(parts)
    return parts[0] / total, parts[1] / total, parts[2] / total


def read_test_ids(spec: str | Path) -> set[str]:
    """Image ids from a file (one per line, ``#`` comments) or a comma-separated list."""
    path = Path(spec)
    text = path.read_text(encoding="utf-8") if path.is_file() else str(spec).replace(",", "\n")
    ids = {line.split("#", 1)[0].strip() for line in text.splitlines()}
    ids.discard("")
    if not ids:
        raise DataFormatError(f"--test-ids {spec}: no image ids")
    return ids


def assign_parts(
    image_ids: list[str], split: tuple[float, float, float] | None, test_ids: set[str] | None, seed: int
) -> dict[str, str]:
    """``{image id: "train" | "val" | "test"}``; by image, seeded; ``test_ids`` fixes the test part."""
    if test_ids is not None:
        unknown = sorted(test_ids - set(image_ids))
        if unknown:
            raise DataFormatError(
                f"--test-ids: {len(unknown)} id(s) have no captioned embedding in the pickle, e.g. {unknown[:3]}"
            )
        rest = [i for i in image_ids if i not in test_ids]
        parts = {i: "test" for i in test_ids}
        n_val = round(len(rest) * split[1] / max(split[0] + split[1], 1e-9)) if split else 0
    else:
        assert split is not None
        rest = list(image_ids)
        n_test = max(1, round(len(rest) * split[2])) if split[2] > 0 else 0
        n_val = max(1, round(len(rest) * split[1])) if split[1] > 0 else 0
        random.Random(seed).shuffle(rest)
        parts = {i: "test" for i in rest[:n_test]}
        rest = rest[n_test:]
    random.Random(f"{seed}:val").shuffle(rest)
    parts.update({i: "val" for i in rest[:n_val]})
    parts.update({i: "train" for i in rest[n_val:]})
    if not any(v == "train" for v in parts.values()):
        raise DataFormatError("the split leaves no image to train on; lower the val/test share")
    return parts


def _write_part(
    out: Path, entries: list[dict[str, Any]], tensors: dict[str, Any], encoder: str
) -> dict[str, Any]:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    keep = {e["image_embedding"] for e in entries}
    save_file({k: v for k, v in tensors.items() if k in keep}, str(out / "clip_embeddings.safetensors"))
    (out / "conversations.json").write_text(
        json.dumps(entries, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    (out / "clipcap_import.json").write_text(
        json.dumps({"encoder": encoder, "embeddings": len(keep), "entries": len(entries)}, indent=1),
        encoding="utf-8",
    )
    return {"dir": str(out), "entries": len(entries), "embeddings": len(keep)}


def _float_tensors(path: str | Path, embeds: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Each embedding as its own contiguous float32 tensor, and their one width.

    Why check here: a pickle mixing towers (two widths) or holding arrays instead of tensors would
    otherwise fail deep in training; copies share no storage with the pickle's tensors.
    """
    import torch

    tensors: dict[str, torch.Tensor] = {}
    widths: dict[int, str] = {}
    for key, value in embeds.items():
        if not isinstance(value, torch.Tensor):
            raise DataFormatError(
                f"{path}: embedding of {key!r} is {type(value).__name__}, expected a tensor"
            )
        tensors[key] = value.detach().to(torch.float32).clone().contiguous()  # no shared storage
        widths.setdefault(int(value.numel()), key)
    if len(widths) > 1:
        shown = ", ".join(f"{w} (e.g. {k!r})" for w, k in sorted(widths.items()))
        raise DataFormatError(f"{path}: embeddings have different widths {shown}; one tower's are expected")
    return tensors, next(iter(widths), 0)  # no embeddings: import_clipcap raises before using it


def _caption_entries(
    path: str | Path, captions: list, tensors: dict[str, Any], lang: str, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """``(entries, skipped, captions per image)``: one conversation entry per caption with an embedding
    (ids ``{image}_{k}``), every other caption in the skip report with its line and reason."""
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
        code = lang if lang in ("zh", "en") else language_of(text)
        rng = random.Random(f"{seed}\0{entry_id}")
        entries.append(
            {
                "id": entry_id,
                "image_embedding": image_id,
                "conversations": build_conversation(text, code, 1, rng, pools=pools),
                "lang": code,
            }
        )
    return entries, skipped, counts


def _write_parts(
    out: Path,
    entries: list[dict[str, Any]],
    tensors: dict[str, Any],
    encoder: str,
    parts_of: tuple[list[str], Any, set[str] | None, int] | None,
) -> dict[str, str]:
    """Write one import (``parts_of`` None) or one per split drawn by image (``parts_of`` = the captioned
    image ids, the split ratios, the fixed test ids and the seed); returns each output's path."""
    if parts_of is None:
        return {"all": _write_part(out, entries, tensors, encoder)}
    parts = assign_parts(*parts_of)
    outputs = {}
    for part in ("train", "val", "test"):
        chosen = [e for e in entries if parts[e["image_embedding"]] == part]
        if chosen:
            outputs[part] = _write_part(out / part, chosen, tensors, encoder)
    return outputs


def import_clipcap(
    path: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    lang: str = "auto",
    split: str | None = None,
    test_ids: str | Path | None = None,
    encoder: str = "openai/clip-vit-base-patch32",
) -> dict[str, Any]:
    """Write the import (see module docstring) to ``out_dir``; return a summary with every skipped row.

    ``encoder`` is the tower that made the embeddings (hub id or directory), recorded so a trained
    model can encode new images the same way. Raises ``DataFormatError`` for embeddings of different
    widths or a pickle whose captions name no stored embedding at all.
    """
    captions, embeds = load_clipcap_pickle(path)
    parts_wanted = parse_split(split, "val" if test_ids is not None else "test") if split else None
    wanted_test = read_test_ids(test_ids) if test_ids is not None else None
    tensors, width = _float_tensors(path, embeds)
    entries, skipped, counts = _caption_entries(path, captions, tensors, lang, seed)
    assert len(captions) == len(entries) + len(skipped)
    if not entries:
        raise DataFormatError(
            f"{path}: none of the {len(captions)} captions has an embedding with its image id "
            f"({len(tensors)} embeddings, e.g. ids {sorted(tensors)[:3]}); the two lists do not match"
        )
    uncaptioned = sorted(set(tensors) - set(counts))
    drawn = parts_wanted is not None or wanted_test is not None
    parts_of = (list(counts), parts_wanted, wanted_test, seed) if drawn else None
    outputs = _write_parts(Path(out_dir), entries, tensors, encoder, parts_of)
    return {
        "rows_in": len(captions),
        "rows_out": len(entries),
        "rows_skipped": len(skipped),
        "skipped": skipped,
        "embeddings": len(tensors),
        "embeddings_without_captions": len(uncaptioned),
        "uncaptioned_examples": uncaptioned[:5],
        "embedding_width": width,
        "encoder": encoder,
        "outputs": outputs,
    }
