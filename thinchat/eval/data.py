"""Turn a LLaVA-format test JSON into evaluation samples: one prompt, its images, and its references.

Each entry contributes its description exchange: the first human turn and first gpt turn, or, where the
converter shuffled grounded questions around it (``turn_types``), the exchange typed "describe", asked
with the entry's ``<image>`` placeholders in front as a user opening the chat would. Entries that show the same images with the same question are one
sample with several references, the multi-reference setting caption metrics are defined for. Samples
whose images are missing or unreadable are skipped and reported with the reason, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from thinchat.conversation import entry_images, read_llava_json
from thinchat.domain.language import language_of
from thinchat.errors import DataFormatError, ImageError
from thinchat.images import load_image

IMAGE_TOKEN = "<image>"


@dataclass
class EvalSample:
    """One question about one slide (zero, one or two images) with every reference answer for it."""

    id: str
    images: list[Path]
    image_names: list[str]
    question: str
    references: list[str]
    lang: str
    entry_ids: list[str] = field(default_factory=list)
    #: earlier LLaVA turns of the same conversation (a follow-up question); the images are in the first
    history: list[dict] = field(default_factory=list)
    #: the slide's class labels (an entry's ``labels``, written by ``data convert --labels``); empty for a
    #: captioned slide
    labels: tuple[str, ...] = ()

    def conversation(self) -> list[dict]:
        """The prompt as a LLaVA ``conversations`` list: the earlier turns, then the question."""
        return [*self.history, {"from": "human", "value": self.question}]


@dataclass
class Skipped:
    """A sample that was not scored, and why (shown in the report)."""

    id: str
    reason: str


def _describe_turns(entry: dict, where: str) -> tuple[str, str]:
    convs = entry.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise DataFormatError(f"{where}: missing or empty 'conversations' list")
    types = entry.get("turn_types")
    if isinstance(types, list) and "describe" in types:
        k = types.index("describe")
        if 2 * k + 1 >= len(convs) or not all(isinstance(t, dict) for t in convs[2 * k : 2 * k + 2]):
            raise DataFormatError(f"{where}: 'turn_types' names exchange {k} but 'conversations' is shorter")
        human, gpt = convs[2 * k].get("value"), convs[2 * k + 1].get("value")
        first = convs[0].get("value") if isinstance(convs[0], dict) else None
        if not isinstance(human, str) or not isinstance(gpt, str) or not isinstance(first, str):
            raise DataFormatError(f"{where}: turn values must be strings")
        images = IMAGE_TOKEN + "\n"
        question = images * first.count(IMAGE_TOKEN) + human.replace(images, "").replace(IMAGE_TOKEN, "")
        return question, gpt
    return _first_turns(convs, where)


def _first_turns(convs: list, where: str) -> tuple[str, str]:
    human = next((t for t in convs if isinstance(t, dict) and t.get("from") == "human"), None)
    gpt = next((t for t in convs if isinstance(t, dict) and t.get("from") == "gpt"), None)
    if human is None or not isinstance(human.get("value"), str):
        raise DataFormatError(f"{where}: no human turn with a text 'value' to use as the question")
    if gpt is None or not isinstance(gpt.get("value"), str) or not gpt["value"].strip():
        raise DataFormatError(
            f"{where}: no non-empty gpt turn to use as the reference answer; every test entry needs one"
        )
    return human["value"], gpt["value"]


def _entry_labels(entry: dict) -> tuple[str, ...]:
    """An entry's class labels: its ``labels`` list of class names; any other ``labels`` value is one of
    the extra keys an entry may carry for other tools, and leaves the slide unlabelled."""
    labels = entry.get("labels")
    if isinstance(labels, list) and labels and all(isinstance(c, str) and c for c in labels):
        return tuple(labels)
    return ()


def load_eval_set(
    data_path: str | Path, limit: int | None = None, seed: int = 0
) -> tuple[list[EvalSample], list[Skipped]]:
    """Read ``data_path`` and return (samples in file order, skipped samples with reasons).

    Raises ``DataFormatError`` for an unreadable file, a malformed entry (named by index and id) or a set
    with no entries; ``limit`` keeps a seeded sample of N samples (after grouping) spread over the classes
    or terms (``thinchat.eval.sampling``), skipped ones included.
    """
    kept, skipped, _ = load_eval_sample(data_path, limit, seed)
    return kept, skipped


def load_eval_sample(
    data_path: str | Path, limit: int | None = None, seed: int = 0
) -> tuple[list[EvalSample], list[Skipped], dict]:
    """``load_eval_set``, and how the scored sample was drawn (``thinchat.eval.sampling.draw_sample``),
    which the report states."""
    from thinchat.eval.sampling import draw_sample

    path, entries = read_llava_json(data_path, "pass --data TEST.json", split="test")
    if not entries:
        raise DataFormatError(f"{path}: empty reference set (the list has no entries)")

    base = path.parent
    groups: dict[tuple, EvalSample] = {}
    used_ids: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{path}: entry {index}" + (f" (id {entry.get('id')!r})" if isinstance(entry, dict) else "")
        if not isinstance(entry, dict):
            raise DataFormatError(f"{where}: expected an object with 'conversations'")
        question, reference = _describe_turns(entry, where)
        image_list = entry_images(entry, where)
        if question.count(IMAGE_TOKEN) != len(image_list):
            raise DataFormatError(
                f"{where}: the question has {question.count(IMAGE_TOKEN)} {IMAGE_TOKEN} placeholders but "
                f"{len(image_list)} images; they must match"
            )
        images = [base / p for p in image_list]
        key = (tuple(str(p) for p in images), question.strip())
        entry_id = str(entry.get("id", index))
        if key in groups:
            groups[key].references.append(reference)
            groups[key].entry_ids.append(entry_id)
            continue
        lang = entry.get("lang") if entry.get("lang") in ("zh", "en") else language_of(reference)
        sample_id = entry_id if entry_id not in used_ids else f"{entry_id}#{index}"
        used_ids.add(sample_id)
        groups[key] = EvalSample(
            sample_id, images, list(image_list), question, [reference], lang, [entry_id],
            labels=_entry_labels(entry),
        )  # fmt: skip

    samples, drawn = draw_sample(list(groups.values()), limit, seed)
    kept: list[EvalSample] = []
    skipped: list[Skipped] = []
    for sample in samples:
        try:
            for image, name in zip(sample.images, sample.image_names, strict=True):
                load_image(image, name=name)  # relative name: the report does not depend on where data lives
        except ImageError as exc:
            skipped.append(Skipped(sample.id, str(exc)))
            continue
        kept.append(sample)
    return kept, skipped, drawn
