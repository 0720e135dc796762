"""The settings of the ``thinchat data`` actions, declared once as typed configs (``thinchat.config``).

Why a module of its own: ``thinchat data ... --help`` builds its options from these fields, so this
module must import nothing heavy; the work modules (``convert``, ``pseudo_label``, ...) are imported only
when an action runs. Each config's fields are the keyword parameters of its function, with the same
defaults (tests/test_data_configs.py checks both), so the command passes ``**dataclasses.asdict(config)``
and a new setting is one field here plus the parameter that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from thinchat.config import field
from thinchat.images import DEFAULT_MAX_PIXELS


@dataclass(kw_only=True)
class ConvertConfig:
    """``data_tools.convert.convert``: image-caption pairs (or class labels) -> LLaVA conversation JSON."""

    # Where the slides come from: captions, a labels table or class folders.
    captions: str | None = field(
        None, help="captions file (TSV/CSV/JSONL/COCO) or folder of .txt (default: --images)"
    )
    images: str | None = field(None, help="directory holding the images")
    labels: str | None = field(
        None,
        metavar="FILE",
        help="instead of --captions: a CSV/TSV/JSONL of classes per image (an id or image column, a class "
        "column or one 0/1 column per class, optional view columns ppl/xpl); images under --images",
    )
    image_folder: str | None = field(
        None, metavar="DIR", help="instead of --captions/--images: one sub-folder of images per class"
    )
    multi_label: bool | None = field(
        None,
        help="labels: an image listed under two classes is one image with both (default: told from the "
        "file; in a single-label set such an image is left out and reported)",
    )
    # What is written.
    out: str = field(help="output JSON; with --split, OUT_train.json, OUT_val.json, ...")
    fmt: Literal["auto", "tsv", "csv", "jsonl", "coco", "folder"] = field(
        "auto", flags=("--format",), help="captions format (auto: told from the content)"
    )
    format_out: Literal["json", "hf"] = field(
        "json",
        help="json: LLaVA JSON files; hf: a datasets.DatasetDict folder at OUT (save_to_disk, Image features)",
    )
    lang: Literal["auto", "zh", "en"] = field("auto", help="caption language (auto: per caption)")
    multi_turn: bool = field(
        False,
        help="add a follow-up turn per report facet after the description (with --qa-turns: shuffled too)",
    )
    qa_turns: int = field(
        0,
        help="grounded question-answer turns per slide (presence yes/no, which-of, attribute; "
        "turns are then shuffled); 0: none",
    )
    describe_first: float = field(
        0.0,
        help="with --qa-turns: share of slides whose conversation opens with the description, as every "
        "interface answers after it (looking first); the rest are shuffled",
    )
    qa_negatives: bool = field(
        True, help="presence questions only about terms the report names (no 'no' answers)"
    )
    lexicon_path: str | None = field(
        None, flags=("--lexicon",), help="lexicon YAML (default: the bundled lexicon.yaml)"
    )
    questions_path: str | None = field(
        None, flags=("--questions",), help="question pools YAML (default: questions.yaml)"
    )
    # Splits, seed and input checks.
    split: str | None = field(None, help="train,val,test ratios by image, e.g. 0.8,0.1,0.1")
    test_ids: str | list[str] | None = field(
        None,
        metavar="FILE",
        help="slide ids held out as OUT_test.json (one a line); the rest is train (with --split, train/val)",
    )
    val_ids: str | list[str] | None = field(
        None, metavar="FILE", help="slide ids for OUT_val.json (one a line)"
    )
    seed: int = field(0, help="seed for questions and splits")
    strict: bool = field(False, help="fail (write nothing) if any row is skipped")
    max_pixels: int = field(DEFAULT_MAX_PIXELS, help="refuse larger images")
    encoding: str = field(
        "utf-8",
        help="captions file encoding when it has no BOM (e.g. gb18030); UTF-8/16/32 BOMs are detected",
    )
    allow_outside_images: bool = field(
        False,
        help="let captions name images outside --images (absolute paths, '..', symlinks); default: refused",
    )


@dataclass(kw_only=True)
class SynthConfig:
    """``data_tools.synth.generate``: procedural thin sections with ground-truth labels and captions."""

    out_dir: str = field(flags=("--out",), help="output directory")
    n: int = field(100, help="number of slides (each: a PPL and an XPL image)")
    seed: int = field(0, help="seed for the slides drawn")
    lang: Literal["zh", "en", "both"] = field("both", help="caption language(s) written")
    size: int = field(224, help="image side in pixels")
    workers: int | None = field(None, help="processes (default: one per CPU)")


@dataclass(kw_only=True)
class ImportClipcapConfig:
    """``data_tools.clipcap.import_clipcap`` (beside its positional pickle file): a ThinGPT/ClipCap
    feature pickle -> JSON + safetensors."""

    out_dir: str = field(flags=("--out",), help="output directory")
    seed: int = field(0, help="seed for questions and splits")
    lang: Literal["auto", "zh", "en"] = field("auto", help="caption language (auto: per caption)")
    split: str | None = field(
        None,
        help="train,test or train,val,test ratios by image (e.g. 0.9,0.1): writes OUT/train, OUT/val, OUT/test",
    )
    test_ids: str | None = field(
        None,
        metavar="FILE|ID,ID",
        help="image ids held out as OUT/test (a file, one id a line, or a comma list); the rest is OUT/train "
        "(with --split train,val: also OUT/val)",
    )
    encoder: str = field(
        "openai/clip-vit-base-patch32",
        help="tower the embeddings came from (hub id or directory), recorded for encoding new images "
        "(default: ThinGPT's CLIP ViT-B/32)",
    )


@dataclass(kw_only=True)
class ReplayConfig:
    """``data_tools.replay.make_replay``: the base model's own answers, as text-only data against
    forgetting."""

    model_dir: str = field(flags=("--model",), help="checkpoint that answers (the base you finetune)")
    out: str = field(help="output LLaVA JSON (text-only entries)")
    lang: Literal["zh", "en", "both"] = field("both", help="language(s) of the questions asked")
    questions: str | None = field(None, help="question pool YAML (default: replay_questions.yaml)")
    max_new_tokens: int = field(96, help="answer length cap")
    batch_size: int = field(8, help="generation batch size")
    holdout_every: int = field(
        0,
        help="write every k-th answer to OUT_heldout.json instead (for thinchat eval --text-data); 0: none",
    )


@dataclass(kw_only=True)
class PseudoLabelConfig:
    """``data_tools.pseudo_label.pseudo_label``: captions written, translated or expanded by a teacher."""

    images: str | None = field(None, help="directory of slides ({id}.jpg or {id}_ppl/_xpl views)")
    teacher: str = field(help="OpenAI-compatible base URL or local checkpoint directory")
    out: str = field(help="captions TSV to append to (resumable)")
    task: Literal["describe", "translate", "expand"] = field(
        "describe", help="describe slides, or translate / expand existing captions"
    )
    captions: str | None = field(None, help="existing captions TSV (translate, expand)")
    prompt_file: str | None = field(None, help="prompt template file ({caption} is replaced)")
    lang: Literal["zh", "en"] = field("zh", help="language of the output captions")
    rate: float = field(1.0, help="max requests per second (0 = unlimited)")
    retries: int = field(2, help="retries of a failed request")
    model: str = field("default", help="model name sent to the endpoint")
    api_key: str | None = field(None, help="API key (default: $OPENAI_API_KEY, else none)")
