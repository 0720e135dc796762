"""``thinchat finetune``: the user's captions (or a ``datasets`` dataset) + images -> finetuned model ->
held-out report, in one resumable command.

Why the quickstart's recipe and not a new one: it is the recipe whose CI result is known
(thinchat/recipes/recipe.py); here only the data step differs (the user's captions, fixed or drawn splits) and the
stage configs are picked for the hardware found: on a CPU the quickstart's budget configs
(configs/demo_cpu*.yaml), on a GPU the LLaVA configs (configs/pretrain_projector.yaml +
configs/finetune_lora.yaml) in bf16 on one device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from thinchat.config import field
from thinchat.errors import ConfigError
from thinchat.recipes.recipe import (
    LANG_PRESETS,
    Steps,
    chat_commands,
    config_path,
    fingerprint,
    run_recipe,
)
from thinchat.recipes.settings import CommonRecipeConfig, pixel_shuffle_field, tower_config_field

log = logging.getLogger(__name__)

#: Stage configs per hardware: (projector, stage 2, overrides for both stages).
HARDWARE_RECIPES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # The quickstart's stage 2, with the verdict weight at 1: 5 lifts the synthetic quickstart but lowers
    # every grains score (docs/experiments.md, Is the verdict in the first token?).
    "cpu": ("configs/demo_cpu_projector.yaml", "configs/demo_cpu.yaml", ("verdict_loss_weight=1",)),
    # One process, no DeepSpeed; the LLaVA batch (16 x 8 accumulation) in bf16.
    "gpu": (
        "configs/pretrain_projector.yaml",
        "configs/finetune_lora.yaml",
        ("cpu=false", "bf16=true", "deepspeed=null"),
    ),
}


#: Stage 0 for labelled images (``tower_config: auto``).
AUTO_TOWER = "configs/tower_cpu.yaml"


@dataclass
class FinetuneConfig(CommonRecipeConfig):
    captions: str = field(
        "", help="captions file (TSV/CSV/JSONL/COCO) or folder of .txt, as for data convert"
    )
    images: str = field("", help="directory holding the images (with --captions or --labels)")
    labels: str = field(
        "",
        metavar="FILE",
        help="instead of captions: a CSV/TSV/JSONL of classes per image (an id or image column, a class column "
        "or one 0/1 column per class, optional view columns ppl/xpl), images under --images",
    )
    image_folder: str = field(
        "", metavar="DIR", help="instead of captions + images: one sub-folder of images per class"
    )
    multi_label: bool = field(
        False,
        help="labels: an image listed under two classes is one image with both classes (default: a "
        "single-label set leaves such an image out and reports it; several label columns are multi-label)",
    )
    dataset: str = field(
        "",
        help="instead of captions + images: a saved datasets.DatasetDict, an imagefolder folder with "
        "metadata, or a hub id (needs network); its test/validation splits become the fixed splits",
    )
    out: str = field("checkpoints/mine", help="where models, data and the report go")
    test_ids: str = field("", metavar="FILE", help="file of slide ids held out for the report (one a line)")
    val_ids: str = field("", metavar="FILE", help="file of slide ids for the validation loss (one a line)")
    split: str = field(
        "auto",
        help="train,val,test ratios by slide (with test_ids: train,val of the rest); auto: 0.9,0.05,0.05 for "
        "captions, 0.75,0.05,0.2 drawn within each class for labels (enough held-out slides per class)",
    )
    lang: Literal["auto", "en", "zh"] = field(
        "auto", help="caption language; auto: the majority of the captions (zh uses the gemma3-270m preset)"
    )
    vision: str = field("dinov2-small", help="vision tower spec (preset, directory or hub id)")
    image_size: int = field(84, help="input resolution (a multiple of 14 for DINOv2)")
    pixel_shuffle: int = pixel_shuffle_field(1)
    feature_layer: int = field(8, help="tower hidden layer fed to the projector (thinchat build)")
    hardware: Literal["auto", "cpu", "gpu"] = field(
        "auto", help="which recipe: cpu (budget configs) or gpu (LLaVA configs, bf16); auto: what is found"
    )
    tower_config: str = tower_config_field(
        "auto", f"auto: {AUTO_TOWER} (skipped where no term or class is named often enough; docs/own-data.md)"
    )
    projector_config: str = field("auto", help="stage-1 config (auto: by hardware)")
    lora_config: str = field("auto", help="stage-2 config (auto: by hardware)")
    stage2_steps: int = field(0, help="stage-2 optimizer steps (0: the stage config's max_steps)")
    eval_limit: int = field(
        40, help="held-out slides scored in the report (a seeded sample spread over the classes / terms)"
    )
    eval_batch_size: int = field(40, help="generation batch size for the report")
    qa_turns: int = field(
        6, help="grounded question-answer turns per training slide (data convert --qa-turns)"
    )
    describe_first: float = field(
        0.0,
        help="share of training slides whose conversation opens with the description "
        "(data convert --describe-first)",
    )
    text_only_ratio: float = field(
        0.1, help="share of stage-2 samples replaying the base model's own general answers; 0: none"
    )
    reliance_samples: int = field(8, help="held-out slides for the image-reliance check (0: off)")
    stage2_seconds: float = field(
        0.0,
        help="seconds of stage-2 training: the run times its first steps and trains as many as fit "
        "(a multiple of 32, at most 1.5x the stage config's max_steps), on any CPU or GPU "
        "(thinchat/train/time_budget.py); 0: the stage config's max_steps (or stage2_steps)",
    )

    def validate(self) -> None:
        given = [
            f"{key} ({value})"
            for key in ("captions", "labels", "image_folder", "dataset")
            if (value := getattr(self, key))
        ]
        if len(given) > 1:
            raise ConfigError(f"both {given[0]} and {given[1]} given: pass one source")
        if not given:
            raise ConfigError(
                "no data: pass --captions FILE --images DIR, --labels FILE --images DIR, --image-folder DIR "
                "(one sub-folder per class), or --dataset PATH"
            )
        for key in ("captions", "labels"):
            if getattr(self, key) and not self.images:
                raise ConfigError(f"--{key} needs --images DIR (the folder its rows name images in)")
        if "dinov2" in self.vision and self.image_size % 14:
            raise ConfigError(f"image_size={self.image_size}: must be a multiple of 14 (DINOv2 patch size)")
        for name in ("test_ids", "val_ids"):
            value = getattr(self, name)
            if value and not Path(value).is_file():
                raise ConfigError(f"{name}: file not found: {value}")


def detect_hardware() -> str:
    """``gpu`` when torch sees a CUDA device, else ``cpu``."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def resolve(config: FinetuneConfig) -> tuple[FinetuneConfig, tuple[str, ...]]:
    """Pick the stage configs for the hardware and check them before any model loads.

    Returns the config with concrete ``projector_config`` / ``lora_config`` and the hardware overrides.
    """
    from thinchat.train.config import load_train_config

    hardware = detect_hardware() if config.hardware == "auto" else config.hardware
    projector, lora, overrides = HARDWARE_RECIPES[hardware]
    config = dataclasses.replace(
        config,
        projector_config=projector if config.projector_config == "auto" else config.projector_config,
        lora_config=lora if config.lora_config == "auto" else config.lora_config,
    )
    for key, allowed in (("projector_config", ("projector",)), ("lora_config", ("lora", "qlora", "full"))):
        path = config_path(getattr(config, key))
        stage = load_train_config(path, [*overrides, *config.train_overrides]).stage
        if stage not in allowed:
            raise ConfigError(f"{key}={path}: stage {stage!r}; this step needs stage {' or '.join(allowed)}")
    log.info("finetune: %s recipe (%s + %s)", hardware, config.projector_config, config.lora_config)
    return config, overrides


def _file_stamp(path: str) -> list[Any]:
    """What identifies an input file's content cheaply: path, size and modification time."""
    if not path:
        return []
    p = Path(path)
    stat = p.stat() if p.exists() else None
    return [str(p.resolve()), stat.st_size if stat else None, stat.st_mtime_ns if stat else None]


def _folder_stamp(path: str) -> str:
    """What identifies a class folder's content cheaply: every file's path, size and modification time."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return fingerprint(
        str(root.resolve()), [[p.relative_to(root).as_posix(), *_file_stamp(str(p))[1:]] for p in files]
    )


#: Default splits: captions keep most slides for training; labels hold out a fifth of each class, so the
#: report's per-class accuracy rests on more than a handful of slides.
AUTO_SPLITS = {"captions": "0.9,0.05,0.05", "labels": "0.75,0.05,0.2"}


def resolved_tower_config(config: FinetuneConfig) -> str:
    """``config.tower_config``, or (``auto``) stage 0 for every dataset: on the grains set it raised the
    class named right from 0.74-0.79 to 0.87-0.89 with labels and the yes/no asked directly from 0.78 to
    0.90; the same grains as plain captions reach term F1 0.84 and yes/no 0.83 with it (docs/own-data.md).
    Stage 0 skips itself, with a warning, where no lexicon term or class is named often enough."""
    if config.tower_config != "auto":
        return config.tower_config
    return AUTO_TOWER


def resolved_split(config: FinetuneConfig) -> str:
    """``config.split``, or (``auto``) the default for captions or for labelled images."""
    if config.split != "auto":
        return config.split
    return AUTO_SPLITS["labels" if config.labels or config.image_folder else "captions"]


def _majority_lang(summary_file: Path) -> str:
    languages = json.loads(summary_file.read_text(encoding="utf-8")).get("languages", {})
    return max(languages, key=languages.get) if languages else "en"


def _convert_step(
    config: FinetuneConfig, steps: Steps, conv: Path, source: dict[str, Any], splits: dict[str, Path]
) -> None:
    """Captions (or labels, or class folders) -> conversations with grounded turns, split by slide."""
    from data_tools.convert import convert
    from thinchat.domain.grounded_qa import vocabulary_digest

    test_ids, val_ids = source["test_ids"], source["val_ids"]
    split = resolved_split(config)
    steps.run(
        "convert",
        fingerprint(
            _file_stamp(source["captions"]),
            str(Path(source["images"]).resolve()),
            _file_stamp(test_ids) if isinstance(test_ids, str) else sorted(test_ids or []),
            _file_stamp(val_ids) if isinstance(val_ids, str) else sorted(val_ids or []),
            split,
            config.lang,
            config.seed,
            config.qa_turns,
            config.describe_first,
            vocabulary_digest(),
            *([_file_stamp(config.labels), config.multi_label] if config.labels else []),
            *([_folder_stamp(config.image_folder), config.multi_label] if config.image_folder else []),
        ),
        splits["test"],
        lambda _: convert(
            source["captions"] or None,
            source["images"] or None,
            conv,
            lang=config.lang,
            split=split,
            seed=config.seed,
            qa_turns=config.qa_turns,
            describe_first=config.describe_first,
            test_ids=test_ids,
            val_ids=val_ids,
            labels=config.labels or None,
            image_folder=config.image_folder or None,
            multi_label=True if config.multi_label else None,
        ),
    )


def _class_probe_step(
    config: FinetuneConfig, steps: Steps, splits: dict[str, Path], report_dir: Path, vision: str
) -> None:
    """Labelled slides: the linear-probe ceiling of the class on the tower's features the model reads
    (``vision``: the frozen spec or stage 0's adapted tower; its input size and layer), put into the report
    beside the models (``thinchat.eval.classes``)."""
    from thinchat.eval.feature_probe import run_probe

    probe_file = Path(config.out) / "class_probe.json"
    pool = "mean"

    def probe(_: bool) -> None:
        result = run_probe(
            splits["train"],
            splits["test"],
            vision,
            (config.image_size,),
            (config.feature_layer,),
            pool=pool,
        )[0]
        detail = f"{vision} at {config.image_size} px, layer {config.feature_layer}, {pool}-pooled views"
        probe_file.write_text(json.dumps({**result, "detail": detail}, indent=1), encoding="utf-8")

    steps.run(
        "class probe",
        fingerprint(vision, config.image_size, config.feature_layer, pool),
        probe_file,
        probe,
    )
    attach_class_probe(report_dir, json.loads(probe_file.read_text(encoding="utf-8")))


def attach_class_probe(report_dir: str | Path, probe: dict[str, Any]) -> None:
    """Put the linear-probe ceiling into a written report (report.json and report.md), beside the models.

    Why after the report: the probe needs the training split and the tower, which the evaluation of a
    test file does not have; the recipe, which has them, adds it (``thinchat.eval.classes`` shows it)."""
    from thinchat.eval.report import render_markdown

    folder = Path(report_dir)
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    if not report.get("classes") or report["classes"].get("probe") == probe:
        return
    report["classes"]["probe"] = probe
    (folder / "report.json").write_text(
        json.dumps(report, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")


def run_finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Run (or reuse) convert -> build -> replay -> stage 1 -> stage 2 -> report; return the summary."""
    config, hardware_overrides = resolve(config)
    root = Path(config.out)
    data_dir = root / "data"
    steps = Steps(root, "finetune")
    started = time.perf_counter()

    captions, images = config.captions, config.images
    test_ids: str | list[str] | None = config.test_ids or None
    val_ids: str | list[str] | None = config.val_ids or None
    if config.dataset:
        from thinchat.hfdata import export_dataset

        exported = data_dir / "dataset"
        plan: dict[str, Any] = {}

        def export(_: bool) -> None:
            plan.update(export_dataset(config.dataset, exported))

        steps.run("dataset", fingerprint(_file_stamp(config.dataset) or config.dataset), exported, export)
        if not plan:
            plan.update(json.loads((exported / "export.json").read_text(encoding="utf-8")))
        captions, images = plan["captions"], plan["images"]
        test_ids = test_ids or plan["test_ids"] or None
        val_ids = val_ids or plan["val_ids"] or None

    conv = data_dir / "conversations.json"
    splits = {s: data_dir / f"conversations_{s}.json" for s in ("train", "val", "test")}
    source = {"captions": captions, "images": images, "test_ids": test_ids, "val_ids": val_ids}
    _convert_step(config, steps, conv, source, splits)
    for name in ("train", "val", "test"):
        if not splits[name].is_file():
            raise ConfigError(
                f"the {name} split is empty ({splits[name]} not written): adjust split={resolved_split(config)} "
                "or the ids files so every split gets slides"
            )
    lang = (
        config.lang if config.lang != "auto" else _majority_lang(conv.with_name(conv.stem + ".summary.json"))
    )
    config = dataclasses.replace(config, lang=lang, tower_config=resolved_tower_config(config))
    llm = config.llm or LANG_PRESETS[lang]
    stage2 = (f"max_steps={config.stage2_steps}",) if config.stage2_steps > 0 else ()
    result = run_recipe(config, steps, llm, splits, hardware_overrides, stage2)
    if config.labels or config.image_folder:
        _class_probe_step(config, steps, splits, result.report_dir, result.vision)
    summary: dict[str, Any] = {
        "lang": lang,
        "stage2_steps": result.budget,
        "seconds": round(time.perf_counter() - started, 1),
        "report": str(result.report_dir / "report.md"),
        "finetuned": str(result.finetuned),
        "base": str(result.base),
        "chat": chat_commands(result.finetuned),
    }
    (root / "finetune_summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    return summary
