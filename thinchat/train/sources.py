"""Training samples read on access: a saved ``datasets`` split or a LLaVA JSON as a ``Sequence[Sample]``.

Why: a 100k-slide set parsed into one list of ``Sample``s (chat messages as nested dicts) holds
gigabytes before training starts. Here one up-front pass parses and checks every entry
(``thinchat.conversation.parse_entry``, then ``as_sample``), so a bad entry still fails before any model
loads with a message naming file and entry, but keeps only a row index, a part number and an images flag
per sample (a few bytes); ``__getitem__`` parses its one entry again. A saved split is read from its
memory-mapped Arrow table (its images are the files ``thinchat.hfdata.as_llava_json`` extracts once); a
JSON file keeps its parsed entries (one copy, no second one as samples).
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from thinchat.conversation import parse_entry, read_llava_json
from thinchat.errors import DataFormatError
from thinchat.train.data import Sample, as_sample, first_turns, split_turns

log = logging.getLogger(__name__)

#: Rows read per Arrow batch in the up-front pass.
BATCH_ROWS = 1000


class JsonRows:
    """The entries of a LLaVA JSON file (images relative to its folder)."""

    def __init__(self, path: str | Path) -> None:
        self.path, self._entries = read_llava_json(
            path, "make one with `thinchat data synth` / `data convert`", split="train"
        )
        self.source = str(self.path)
        self.image_root = self.path.parent

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, index: int) -> Any:
        return self._entries[index]

    def entries(self) -> Iterator[Any]:
        return iter(self._entries)


class ArrowRows:
    """The rows of a saved converted split as LLaVA entries, read from the memory-mapped table.

    Image names follow ``as_llava_json`` (``images/<id>_<k><suffix>``, under ``<split>.llava/``), which
    writes the files once; only the stored names are read from the table, never the image bytes.
    """

    COLUMNS = ("id", "conversations", "turn_types")

    def __init__(self, path: str | Path, split: str) -> None:
        from thinchat.hfdata import as_llava_json, open_split

        path = Path(path)
        self.image_root = as_llava_json(path, split).parent
        table, _ = open_split(path, split)
        self._table = table.with_format("arrow")
        self._columns = [c for c in self.COLUMNS if c in table.column_names]
        self.source = f"{path} (split {split})" if (path / "dataset_dict.json").is_file() else str(path)

    def __len__(self) -> int:
        return len(self._table)

    def entry(self, index: int) -> dict[str, Any]:
        return next(self._entries(self._table[index]))

    def entries(self) -> Iterator[dict[str, Any]]:
        for batch in self._table.iter(batch_size=BATCH_ROWS):
            yield from self._entries(batch)

    def _entries(self, table: Any) -> Iterator[dict[str, Any]]:
        """LLaVA entries of a ``pyarrow.Table`` slice: text columns as Python, image names only."""
        from thinchat.hfdata import image_suffix

        rows = table.select(self._columns).to_pylist()
        for row, stored in zip(rows, _stored_names(table.column("image")), strict=True):
            row["image"] = [f"images/{row['id']}_{k}{image_suffix(name)}" for k, name in enumerate(stored)]
            if not row.get("turn_types"):
                row.pop("turn_types", None)  # the table stores no types as an empty list
            yield row


def _stored_names(column: Any) -> Iterator[list[str | None]]:
    """Each row's stored image paths from a ``list<struct<bytes, path>>`` column, without the bytes."""
    import pyarrow.compute as pc

    for chunk in column.chunks:
        paths = pc.struct_field(pc.list_flatten(chunk), "path").to_pylist()
        start = 0
        for count in pc.list_value_length(chunk).to_pylist():
            yield paths[start : start + (count or 0)]
            start += count or 0


def open_rows(path: str | Path, split: str = "train") -> JsonRows | ArrowRows:
    """The rows of ``path``: a saved converted split (``split`` of a DatasetDict) or a LLaVA JSON file."""
    from thinchat.hfdata import is_saved_dataset

    if Path(path).is_dir() and is_saved_dataset(Path(path)):
        return ArrowRows(path, split)
    return JsonRows(path)


class LazySamples(Sequence[Sample]):
    """The samples of ``rows`` after ``first_turns(max_turns)`` and ``split_turns(layout)``: the samples,
    in order, that parsing every entry into a list would give, parsed on access.

    The up-front pass raises the first entry's error; it keeps per sample its row, its part
    (its index among the samples ``split_turns`` makes of the row) and whether it shows images.
    """

    def __init__(
        self,
        rows: JsonRows | ArrowRows,
        max_images: int = 4,
        check_files: bool = True,
        max_turns: int | None = None,
        layout: str = "conversation",
    ) -> None:
        self.rows = rows
        self.max_images = max_images
        self.check_files = check_files
        self.max_turns = max_turns
        self.layout = layout
        self._row = array("q")
        self._part = array("h")
        self._images = array("b")
        for index, entry in enumerate(rows.entries()):
            for part, sample in enumerate(self._parts(entry, index)):
                self._row.append(index)
                self._part.append(part)
                self._images.append(bool(sample.images))
        if not self._row:
            raise DataFormatError(f"{rows.source}: the dataset is empty")

    def _parts(self, entry: Any, index: int) -> list[Sample]:
        parsed = parse_entry(entry, index, self.rows.source)
        sample = as_sample(parsed, self.rows.image_root, self.max_images, self.check_files)
        sample = first_turns(sample, self.max_turns)
        return split_turns(sample, self.layout)

    def __len__(self) -> int:
        return len(self._row)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]  # type: ignore[return-value]
        row = self._row[index]
        return self._parts(self.rows.entry(row), row)[self._part[index]]

    def has_images(self, index: int) -> bool:
        return bool(self._images[index])


def open_samples(
    path: str | Path,
    *,
    split: str = "train",
    max_images: int = 4,
    max_turns: int | None = None,
    layout: str = "conversation",
    check_files: bool = True,
) -> LazySamples:
    """``LazySamples`` of a saved split or a LLaVA JSON: what the trainer reads its sets with."""
    samples = LazySamples(open_rows(path, split), max_images, check_files, max_turns, layout)
    log.info("%s: %d samples, parsed on access", samples.rows.source, len(samples))
    return samples
