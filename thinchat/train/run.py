"""``train(config)``: check everything, build the stage's model and data, run the Trainer, write the outputs.

Why this order: every mistake a user can make (bad config, a GPU recipe on a CPU, bad dataset, a resume
directory from another model) is found before the model is loaded, so nothing is lost and no time wasted.
Outputs: stage 1 and full fine-tuning write a standard Llava directory; LoRA writes a peft adapter
(projector in ``modules_to_save``), the processor and ``thinchat_checkpoint.json`` naming the base model,
which ``thinchat.model.loading.load_pretrained`` reads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thinchat.errors import ConfigError
from thinchat.train import checkpoints
from thinchat.train.config import TrainConfig, config_dict
from thinchat.train.data import Sample, has_images, mix_text_only
from thinchat.train.lora_init import gradient_batches, save_initial_adapter
from thinchat.train.sources import open_samples
from thinchat.train.stages import Stage, stage_for

if TYPE_CHECKING:
    from thinchat.train.dataset import SupervisedDataset

log = logging.getLogger(__name__)


def load_data(config: TrainConfig) -> tuple[Sequence[Sample], Sequence[Sample] | None]:
    """The training (with text-only mix) and validation sets, checked entry by entry before any model
    loads and parsed on access (``thinchat.train.sources``): a 100k-slide set is never one list."""
    common = {"max_images": config.max_images, "max_turns": config.max_turns}
    samples = open_samples(config.data, layout=config.turn_layout, **common)
    extra: Sequence[Sample] = (
        open_samples(config.text_data, max_images=config.max_images) if config.text_data else []
    )
    bad = next((i for i in range(len(extra)) if has_images(extra, i)), None)
    if bad is not None:
        raise ConfigError(
            f"text_data={config.text_data}: {extra[bad].where} has images; text_data is for text-only entries"
        )
    train = mix_text_only(samples, extra, config.text_only_ratio, config.seed)
    val = None
    if config.val_data:
        val = open_samples(config.val_data, split="val", layout=config.turn_layout, **common)
    return train, val


def attach_feature_cache(config: TrainConfig, model, processor, datasets: list[Any], device=None):
    """A ``FeatureCache`` filled for every image of ``datasets`` (which then skip pixels), or None.

    ``datasets``: the training set first, then the others. ``device``: the training device
    (``TrainingArguments.device``); the tower runs there in the training precision, each rank on its
    shard of the images (``FeatureCache.precompute``). With ``rotations`` the training images' eight
    views are cached (``thinchat.train.augment``), the others' as they are.
    """
    if not config.feature_cache or stage_for(config).tower_trainable(config):
        return None
    from thinchat.train.feature_cache import FeatureCache

    root = (
        Path(config.feature_cache_dir)
        if config.feature_cache_dir
        else Path(config.data).parent / ".feature_cache"
    )
    import torch

    compute = torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else torch.float32
    cache = FeatureCache(
        root, model, processor, dtype=config.feature_cache_dtype, device=device, compute_dtype=compute
    )
    from thinchat.train.augment import VIEWS

    paths: list[Any] = []
    for index, ds in enumerate(datasets):
        if ds is not None:
            mine = [p for sample in ds.iter_samples() for p in ds.view_refs(sample)]  # tiles too
            views = tuple(range(VIEWS)) if config.rotations and index == 0 else (0,)
            cache.precompute(mine, views=views)
            ds.load_pixels = False
            paths += mine
    log.info(
        "feature cache %s: %d images ready%s",
        cache.dir,
        len(set(paths)),
        f" (training images in {VIEWS} views)" if config.rotations else "",
    )
    return cache


def fit_projector(config, model, processor, train_set, cache) -> None:
    """Stage 1 in closed form (``init: ridge``): see ``thinchat.train.projector_init``.

    With ``rotations`` each slide gives eight rows, the tower features of its eight views.
    """
    from thinchat.train.augment import VIEWS
    from thinchat.train.projector_init import init_projector_ridge

    views = range(VIEWS) if config.rotations else range(1)
    answers, features = [], []
    for sample in train_set.iter_samples():  # one sample parsed at a time
        if sample.images:
            answer = richest_answer(sample.messages, sample.turn_types)
            if answer.strip():
                answers.append(answer)
                refs = train_set.view_refs(sample)  # with tiles, each image's tiles after it
                features += [cache.features_for(refs, [v] * len(refs)) for v in views]
    stats = init_projector_ridge(
        model,
        processor.tokenizer,
        answers,
        features,
        alpha=config.ridge_alpha,
        terms_alpha=config.terms_alpha if config.ridge_terms else None,
        rows_per_answer=len(views),
    )
    log.info("projector fitted in closed form: %s", stats)


def richest_answer(messages: list[dict[str, Any]], turn_types: list[str] | None = None) -> str:
    """The slide's description: the answer of the converter's ``describe`` exchange where the sample
    says which one it is, else the longest assistant answer.

    Why not the first: grounded question turns are shuffled around the description, and fitting the
    projector to "No, there is no dolomite in this slide." would map the slide onto words it lacks. Why
    not always the longest: a labelled slide's description is one short sentence ("The image shows
    quartz."), shorter than its sure-no answer ("No, there is no feldspar in this slide.").
    """
    answers = []
    for message in messages:
        if message["role"] == "assistant":
            content = message["content"]
            text = (
                content
                if isinstance(content, str)
                else "".join(part.get("text", "") for part in content if part.get("type") == "text")
            )
            answers.append(text)
    if turn_types and len(turn_types) == len(answers) and "describe" in turn_types:
        return answers[turn_types.index("describe")]
    return max(answers, key=len, default="")


def _output_dir_and_resume(config: TrainConfig, resume: str | bool | None) -> tuple[Path, str | bool | None]:
    """The run directory and ``resume`` made concrete: ``"auto"`` decided, a checkpoint -> its run."""
    output_dir = Path(config.output_dir)
    if resume == "auto":
        resume = True if checkpoints.newest_complete(output_dir) is not None else None
    if isinstance(resume, str) and resume:
        resumed = Path(resume)
        output_dir = resumed.parent if resumed.name.startswith("checkpoint-") else resumed
    return output_dir, resume


def _check_base_model(base: Path) -> None:
    """Refuse a ``model`` that is not a Llava checkpoint before anything loads."""
    if not (base / "config.json").is_file():
        from thinchat.errors import ModelSpecError

        raise ModelSpecError(
            f"model={base}: not a Llava checkpoint directory (no config.json); run `thinchat build` "
            "first, or point model at a stage-1 output"
        )


def _checkpoint_to_resume(output_dir: Path, resume: str | bool | None, current: dict[str, Any]) -> str | None:
    """The checkpoint to continue from, or None for a fresh run; a fresh run never overwrites checkpoints."""
    resume_from = checkpoints.resolve_resume(output_dir, resume, current)
    if resume_from is None and checkpoints.newest_complete(output_dir) is not None:
        raise ConfigError(
            f"{output_dir} already holds checkpoints of a run: add --resume to continue it, "
            "or choose another output_dir"
        )
    return resume_from


def _datasets(
    config: TrainConfig,
    model: Any,
    processor: Any,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample] | None,
) -> tuple[SupervisedDataset, SupervisedDataset | None]:
    """The tokenized train and validation sets, cut to the LM's context if it is shorter than max_length."""
    from thinchat.model.compose import max_positions
    from thinchat.model.tiling import max_tiles_of
    from thinchat.train.dataset import SupervisedDataset

    limit = max_positions(model.config.text_config)
    max_length = min(config.max_length, limit) if limit else config.max_length
    isolate = config.turn_layout == "isolated"
    tiles = max_tiles_of(model.config)  # the checkpoint's tiles per image (thinchat build --max-tiles)
    train_set = SupervisedDataset(
        train_samples,
        processor,
        max_length,
        config.too_long,
        "train",
        isolate,
        config.verdict_loss_weight,
        max_tiles=tiles,
    )
    val_set = (
        SupervisedDataset(
            val_samples, processor, max_length, config.too_long, "val", isolate, max_tiles=tiles
        )
        if val_samples
        else None
    )
    return train_set, val_set


def _start_run(
    config: TrainConfig,
    stage: Stage,
    model: Any,
    processor: Any,
    output_dir: Path,
    current: dict[str, Any],
    resumed: bool,
    train_set: SupervisedDataset,
    feature_cache: Any,
) -> None:
    """Create the run directory; a fresh run also writes its metadata, first adapter, fitted projector."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if not resumed and checkpoints.is_main_process():
        checkpoints.write_json_atomic(
            output_dir / checkpoints.RUN_META, {**current, "config": config_dict(config)}
        )
    if stage.rewrites_base(config) and not resumed and checkpoints.is_main_process():
        save_initial_adapter(model, output_dir)
    if stage.fits_projector(config) and not resumed:
        fit_projector(config, model, processor, train_set, feature_cache)


def _build_trainer(
    config: TrainConfig,
    model: Any,
    processor: Any,
    args: Any,
    train_set: SupervisedDataset,
    val_set: SupervisedDataset | None,
    feature_cache: Any,
    output_dir: Path,
    callbacks: Sequence[Any],
) -> Any:
    """The ``ThinchatTrainer`` with thinchat's callbacks (throughput, the time budget) and the caller's."""
    from thinchat.train.dataset import Collator
    from thinchat.train.trainer import ThinchatTrainer, add_callbacks, step_budget

    budget = step_budget(config)
    trainer = ThinchatTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=Collator(processor.tokenizer.pad_token_id),
        processing_class=processor.tokenizer,
        projector_lr=config.projector_lr,
        keep_checkpoints=config.save_total_limit,
        lengths=train_set.lengths,
        group_by_length=config.group_by_length,
        feature_cache=feature_cache,
        step_budget=budget,
        rotation_seed=config.seed if config.rotations else None,
    )
    add_callbacks(trainer, budget, output_dir, callbacks)
    return trainer


def train(config: TrainConfig, resume: str | bool | None = None, callbacks: Sequence[Any] = ()) -> Path:
    """Run one stage; returns the output directory (the final model is written there).

    ``resume``: None (fresh run; refused if ``output_dir`` already holds checkpoints), True (newest complete
    checkpoint of ``output_dir``), a run or checkpoint directory, or ``"auto"`` (resume when a complete
    checkpoint exists, else start fresh: for pipelines such as the quickstart that may have been interrupted).
    """
    from thinchat.precision import resolve_bf16
    from thinchat.train.host import fit_to_host

    config = fit_to_host(config)  # a GPU recipe without a GPU: the CPU with bf16: auto, or one-line refusal
    config = resolve_bf16(config)  # bf16: auto -> true / false, measured on the training device
    stage = stage_for(config)
    stage.check(config)
    output_dir, resume = _output_dir_and_resume(config, resume)
    base = Path(config.model)
    _check_base_model(base)
    if not stage.uses_trainer:
        return stage.train(config, resume)
    current = checkpoints.fingerprint(base, config.stage, config)
    resume_from = _checkpoint_to_resume(output_dir, resume, current)
    train_samples, val_samples = load_data(config)

    from thinchat.train.trainer import cpu_settings, training_arguments

    cpu_settings(config)
    from transformers import set_seed

    from thinchat.train.model_setup import count_trainable

    set_seed(config.seed)  # LoRA / projector initialisation must not depend on what ran before
    model, processor = stage.load(config)
    train_set, val_set = _datasets(config, model, processor, train_samples, val_samples)
    model.requires_grad_(False)  # stage.prepare decides what trains; the feature cache needs a frozen tower
    # The arguments first: they set up torch.distributed, so the feature cache can shard across ranks.
    args = training_arguments(config, output_dir, val_set is not None)
    feature_cache = attach_feature_cache(config, model, processor, [train_set, val_set], args.device)
    model = stage.prepare(model, config, lambda: gradient_batches(config, train_set, feature_cache))
    trainable, total = count_trainable(model)
    log.info(
        "stage %s: training %d of %d parameters (%.2f%%)",
        config.stage,
        trainable,
        total,
        100 * trainable / total,
    )

    resumed = resume_from is not None
    _start_run(config, stage, model, processor, output_dir, current, resumed, train_set, feature_cache)
    if config.closed_form_only():
        if checkpoints.is_main_process():
            model.save_pretrained(str(output_dir))
            processor.save_pretrained(str(output_dir))
            log.info("wrote %s (closed-form projector, no gradient steps)", output_dir)
        return output_dir
    trainer = _build_trainer(
        config, model, processor, args, train_set, val_set, feature_cache, output_dir, callbacks
    )
    trainer.train(resume_from_checkpoint=resume_from)
    if trainer.args.should_save:
        stage.save_final(trainer, trainer.model, processor, config, output_dir)
        log.info("wrote %s", output_dir)
    return output_dir
