"""``datasets`` interop: write converted conversations as a ``datasets.DatasetDict`` and read one (or an
imagefolder folder, or a hub dataset) back into the files the trainer and the evaluator read.

Why Arrow on disk: a 100k-slide set held as one Python list of dicts costs gigabytes of RAM before
training starts; ``save_to_disk`` / ``load_from_disk`` memory-map the table, and rows are written and read
one at a time here (bench/bench_datasets.py measures the peak RSS). Image bytes are stored in the table
(``Image`` features), so a saved DatasetDict is one self-contained folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from thinchat.errors import DataFormatError

log = logging.getLogger(__name__)

#: Split names read as the fixed test / validation splits.
TEST_SPLITS = ("test",)
VAL_SPLITS = ("validation", "val", "valid", "dev")
CAPTION_COLUMNS = ("caption", "text", "description", "report", "captions")


def conversation_features():
    """The columns of a converted split: LLaVA entries plus the source caption."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "id": Value("string"),
            "image": List(Image()),
            "caption": Value("string"),
            "conversations": List({"from": Value("string"), "value": Value("string")}),
            "lang": Value("string"),
            "turn_types": List(Value("string")),
            "labels": List(Value("string")),  # class labels of labelled slides (data convert --labels)
        }
    )


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``save_to_disk`` (a DatasetDict or a single split)."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def write_datasetdict(
    splits: dict[str, Iterable[dict[str, Any]]], base: Path, out: Path, captions: dict[str, str]
) -> Path:
    """Save LLaVA entries per split (image paths relative to ``base``) as a DatasetDict at ``out``."""
    from datasets import Dataset, DatasetDict

    features = conversation_features()

    def rows(entries: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for entry in entries:
            names = entry.get("image") or []
            names = [names] if isinstance(names, str) else names
            yield {
                "id": entry["id"],
                "image": [{"bytes": (base / n).read_bytes(), "path": Path(n).name} for n in names],
                "caption": captions.get(entry["id"], ""),
                "conversations": entry["conversations"],
                "lang": entry.get("lang", ""),
                "turn_types": entry.get("turn_types", []),
                "labels": entry.get("labels", []),
            }

    data = DatasetDict(
        {
            name: Dataset.from_generator(rows, features=features, gen_kwargs={"entries": list(entries)})
            for name, entries in splits.items()
        }
    )
    if out.exists():
        shutil.rmtree(out)
    data.save_to_disk(str(out))
    return out


def load_any(source: str | Path):
    """A ``DatasetDict`` from a saved folder, an imagefolder folder (images + metadata.csv/jsonl), or a
    hub id (needs network)."""
    import datasets

    path = Path(source)
    if is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
    if path.is_dir():
        return datasets.load_dataset("imagefolder", data_dir=str(path))
    if path.exists():
        raise DataFormatError(f"{source}: not a saved dataset or an imagefolder folder")
    try:
        return datasets.load_dataset(str(source))
    except Exception as exc:  # offline, unknown id, gated: one clear message
        raise DataFormatError(f"{source}: could not load it as a hub dataset ({exc})") from exc


def _image_columns(features: dict[str, Any]) -> list[str]:
    from datasets import Image, List, Sequence

    columns = []
    for name, feature in features.items():
        inner = feature.feature if isinstance(feature, (List, Sequence)) else feature
        if isinstance(inner, Image):
            columns.append(name)
    return columns


def image_suffix(stored_path: str | None) -> str:
    """The file suffix an image stored under ``stored_path`` is written with (``.png`` when unknown)."""
    return Path(stored_path or "x.png").suffix or ".png"


def _write_image(value: dict[str, Any], target: Path) -> Path:
    target = target.with_name(target.name + image_suffix(value.get("path")))  # "s.1" stays "s.1"
    if value.get("bytes"):
        target.write_bytes(value["bytes"])
    elif value.get("path") and Path(value["path"]).is_file():
        shutil.copyfile(value["path"], target)
    else:
        raise DataFormatError(f"image for {target.stem} has neither bytes nor a readable path")
    return target


def _caption(row: dict[str, Any], columns: set[str]) -> str:
    for name in CAPTION_COLUMNS:
        if name in columns and isinstance(row[name], str) and row[name].strip():
            return row[name]
    for turn in row.get("conversations") or []:
        if turn.get("from") == "gpt":
            return turn["value"]
    return ""


def export_dataset(source: str | Path, out: Path) -> dict[str, Any]:
    """Write a dataset's images and captions as files ``data convert`` reads (a JSONL + an images folder).

    Rows stream one at a time with undecoded image bytes. Splits named test / validation become the fixed
    test / val ids; every other split is training data. Returns (and saves as ``export.json``) the plan.
    """
    from datasets import Image, List

    data = load_any(source)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    images = out / "images"
    plan: dict[str, Any] = {"captions": str(out / "captions.jsonl"), "images": str(images)}
    split_ids: dict[str, list[str]] = {"test": [], "val": []}
    rows_out = 0
    with open(plan["captions"], "w", encoding="utf-8") as captions:
        for split, table in data.items():
            image_columns = _image_columns(table.features)
            if not image_columns:
                raise DataFormatError(
                    f"{source}: split {split!r} has no image column (datasets Image feature)"
                )
            column = image_columns[0]
            inner = table.features[column]
            undecoded = List(Image(decode=False)) if isinstance(inner, List) else Image(decode=False)
            table = table.cast_column(column, undecoded)
            columns = set(table.column_names)
            kind = "test" if split in TEST_SPLITS else "val" if split in VAL_SPLITS else "train"
            for index, row in enumerate(table):
                slide = str(row.get("id") or f"{split}_{index}").replace("/", "_")
                caption = _caption(row, columns)
                values = row[column] if isinstance(row[column], list) else [row[column]]
                names = []
                for view, value in enumerate(values):  # the first view at the top: its name is the slide id
                    folder = images / f"view{view}" if view else images
                    folder.mkdir(parents=True, exist_ok=True)
                    names.append(_write_image(value, folder / slide).relative_to(images).as_posix())
                captions.write(json.dumps({"image": names, "caption": caption}, ensure_ascii=False) + "\n")
                rows_out += 1
                if kind != "train":
                    split_ids[kind].append(slide)
    plan.update(test_ids=split_ids["test"], val_ids=split_ids["val"], rows=rows_out, source=str(source))
    (out / "export.json").write_text(json.dumps(plan, indent=1, ensure_ascii=False), encoding="utf-8")
    log.info("dataset %s: %d rows exported to %s", source, rows_out, out)
    return plan


def open_split(path: Path, split: str):
    """The saved converted split ``split`` of ``path`` (a DatasetDict or one saved split) and the name of
    its ``<name>.llava/`` folder beside it; ``DataFormatError`` when it is not a converted split."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataFormatError(f"{path}: no split {split!r} (has {', '.join(loaded)})")
        loaded, name = loaded[split], f"{path.name}_{split}"
    else:
        name = path.name
    missing = {"id", "image", "conversations"} - set(loaded.column_names)
    if missing:
        raise DataFormatError(f"{path}: not a converted split (missing {', '.join(sorted(missing))})")
    return loaded, name


def as_llava_json(path: Path, split: str) -> Path:
    """A saved converted split (``<dict>/<split>`` or a DatasetDict's ``split``) as LLaVA JSON + image files
    in ``<path>.llava/`` beside it (written once), so ``thinchat train`` / ``eval`` read it like a JSON.
    Image ``k`` of row ``id`` is ``images/<id>_<k><suffix>`` (``image_suffix``): the trainer's lazy
    reader (``thinchat/train/sources.py``) names the same files from the table."""
    loaded, name = open_split(path, split)
    target_dir = path.parent / f"{name}.llava"
    target = target_dir / "data.json"
    if target.is_file() and target.stat().st_mtime >= path.stat().st_mtime:
        return target
    from datasets import Image, List

    loaded = loaded.cast_column("image", List(Image(decode=False)))
    (target_dir / "images").mkdir(parents=True, exist_ok=True)
    with open(target, "w", encoding="utf-8") as out:  # streamed: never the whole set as Python objects
        out.write("[")
        for index, row in enumerate(loaded):
            names = [
                _write_image(v, target_dir / "images" / f"{row['id']}_{k}").relative_to(target_dir).as_posix()
                for k, v in enumerate(row["image"])
            ]
            entry = {"id": row["id"], "image": names, "conversations": row["conversations"]}
            if row.get("lang"):
                entry["lang"] = row["lang"]
            if row.get("turn_types"):
                entry["turn_types"] = row["turn_types"]
            if row.get("labels"):
                entry["labels"] = row["labels"]
            out.write(("," if index else "") + "\n" + json.dumps(entry, ensure_ascii=False))
        out.write("\n]\n")
    return target
