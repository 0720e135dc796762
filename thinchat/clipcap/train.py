"""The ``clipcap`` stage: ThinGPT/ClipCap pooled embeddings -> a prefix MLP + LoRA on the LM.

Why this shape: a ThinGPT pickle holds one pooled CLIP embedding per image, which no Llava projector can
turn into several different LM tokens; ClipCap's prefix MLP does (``thinchat.clipcap.prefix``). ThinGPT
also fine-tunes its GPT-2 (its "finetune" mode): a frozen LM behind a 10-token prefix does not learn a
100-character report style in a CPU budget, so LoRA (peft) on the LM's linear layers is on by default
(``lora: false`` gives ClipCap's frozen-LM mode). The prefix output reaches the Llava through
``mm_encoder_outputs``, the same hook the chat engine and ``thinchat eval`` use, so training and
generation run the one path (``thinchat.clipcap.model.ClipCapModel``).

Why on the shared ``ThinchatTrainer`` (``thinchat.train.trainer``), with the training arguments every
stage gets: checkpoints with optimizer, scheduler and RNG state, their completion marker, rotation and
full-disk message, an exact ``--resume``, the progress bar, the logs and ``time_budget_s`` are then the
other stages' own. ``ClipCapTrainer`` changes only what Trainer cannot know: the model is a
``ClipCapModel`` (the Llava, LoRA-wrapped or frozen, plus a prefix outside it), which Trainer would save
whole (the frozen base in every checkpoint), so it writes and reads the prefix and the adapter itself;
the prefix trains at ``projector_lr``; the LM head runs only where a label is
(``logits_only_where_scored``; the labels cover the end-of-turn token, where generation stops); and
every evaluation (``eval_steps``) also logs one greedy answer for the first held-out slide.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thinchat.clipcap.data import ClipCapData, ClipCapSample, collate, encode_samples, load_clipcap_dir
from thinchat.clipcap.model import ClipCapModel
from thinchat.clipcap.prefix import ClipCapPrefix
from thinchat.errors import ConfigError, DataFormatError
from thinchat.train import checkpoints
from thinchat.train.trainer import ThinchatTrainer, logits_only_where_scored

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"


def prefix_inputs_embeds(
    model: Any, prefix: ClipCapPrefix, input_ids: torch.Tensor, embeddings: torch.Tensor
) -> torch.Tensor:
    """``inputs_embeds`` with the prefix output at the ``<image>`` tokens (k per embedding)."""
    from thinchat.train.embeds import scatter_image_embeds

    return scatter_image_embeds(model, input_ids, prefix(embeddings))


def check_data(train: ClipCapData, val: ClipCapData | None) -> None:
    """Train and held-out embeddings must come from one tower (same width, same recorded encoder)."""
    if val is None:
        return
    if val.width != train.width:
        raise DataFormatError(
            f"{val.directory}: embeddings are {val.width} wide, {train.directory}'s are {train.width}; "
            "both must come from the same tower"
        )
    if train.encoder and val.encoder and train.encoder != val.encoder:
        raise DataFormatError(
            f"{val.directory}: embeddings from {val.encoder}, {train.directory}'s from {train.encoder}"
        )


def add_lora(model: Any, config: Any) -> Any:
    """peft LoRA on the LM's linear layers (never the tower or the projector, which this stage skips)."""
    from peft import LoraConfig, get_peft_model

    from thinchat.train.model_setup import LM_PREFIX, target_regex

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target_regex(model, config.lora_target, LM_PREFIX),
    )
    return get_peft_model(model, lora)


def build_model(config: Any, train_data: ClipCapData) -> tuple[ClipCapModel, Any]:
    """The frozen base (LoRA on its LM unless ``lora: false``) and a new prefix centred on the training
    embeddings, as one ``ClipCapModel``; with the base's processor."""
    from thinchat.generation import stop_token_ids
    from thinchat.train.model_setup import load_base_dir

    model, processor = load_base_dir(config.model, dtype=torch.float32)
    model.requires_grad_(False)
    hidden = model.get_input_embeddings().weight.shape[1]
    prefix = ClipCapPrefix(
        train_data.width, hidden, config.prefix_tokens, config.encoder or train_data.encoder
    )
    prefix.set_input_stats(torch.stack([t.reshape(-1) for t in train_data.embeddings.values()]))
    if config.lora:
        model = add_lora(model, config)
    return ClipCapModel(model, prefix, stop_token_ids(model, processor.tokenizer)), processor


def scored_forward(model: ClipCapModel, batch: dict[str, torch.Tensor]) -> Any:
    """``model``'s outputs on ``batch`` with the LM head only where a label is: the same loss as scoring
    every position, at a fraction of the head's cost (on a 262k vocabulary the head is most of a step)."""
    return model(**logits_only_where_scored(batch))


@dataclass
class ClipCapCollator:
    """``collate``'s batch with the embeddings as ``pixel_values``, the keyword ``ClipCapModel`` reads."""

    pad_token_id: int

    def __call__(self, samples: list[ClipCapSample]) -> dict[str, torch.Tensor]:
        batch = collate(samples, self.pad_token_id)
        batch["pixel_values"] = batch.pop("embeddings")
        return batch


class ClipCapTrainer(ThinchatTrainer):
    """``ThinchatTrainer`` on a ``ClipCapModel``: prefix + adapter checkpoints, the prefix at
    ``projector_lr``, the LM head only on labels, and a greedy answer logged with every evaluation."""

    projector_key = "prefix."

    def __init__(
        self, *args: Any, sample: ClipCapSample | None = None, sample_max_new_tokens: int = 96, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        #: the held-out slide answered (greedily) at every evaluation, for the log
        self.sample = sample
        self.sample_max_new_tokens = sample_max_new_tokens
        self.model_accepts_loss_kwargs = False  # the loss is each batch's mean: Trainer scales it

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        """The batch's mean loss, the LM head run only where a label is (``scored_forward``)."""
        outputs = scored_forward(model, inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        """The prefix, the LoRA adapter (none in frozen-LM mode) and the processor; never the base."""
        if not self.args.should_save:
            return
        directory = Path(output_dir or self.args.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.prefix.save(directory)
        if hasattr(self.model.llava, "peft_config"):
            self.model.llava.save_pretrained(str(directory))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(str(directory))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Read back what ``_save`` wrote; Trainer then restores the optimizer, schedule and RNG."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        model = model if model is not None else self.model
        directory = Path(resume_from_checkpoint)
        if (directory / "optimizer.safetensors").is_file() and not (directory / "optimizer.pt").is_file():
            raise ConfigError(
                f"{directory} was written by the clipcap loop of an earlier thinchat, whose optimizer state "
                "the Trainer cannot read; start a fresh run in a new output_dir (its prefix.safetensors and "
                "adapter are plain safetensors files you can keep)"
            )
        model.prefix.load_state_dict(ClipCapPrefix.load(directory).state_dict())
        if hasattr(model.llava, "peft_config"):
            set_peft_model_state_dict(model.llava, load_file(str(directory / "adapter_model.safetensors")))

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """The held-out loss (Trainer's ``eval_loss``), then one greedy answer in the log beside it."""
        metrics = super().evaluate(*args, **kwargs)
        if self.sample is not None:
            answer = self.greedy_answer(self.sample)
            step = self.state.global_step
            self.state.log_history.append({"sample_id": self.sample.id, "sample": answer, "step": step})
            log.info("step %d: held-out loss %.4f; sample %s: %r", step,
                     metrics.get("eval_loss", float("nan")), self.sample.id, answer)  # fmt: skip
        return metrics

    @torch.no_grad()
    def greedy_answer(self, sample: ClipCapSample) -> str:
        """The model's greedy answer to ``sample``'s prompt (its tokens before the first label)."""
        model = self.model
        model.eval()
        prompt = [t if lab == -100 else None for t, lab in zip(sample.input_ids, sample.labels, strict=True)]
        cut = prompt.index(None) if None in prompt else len(prompt)
        ids = torch.tensor([sample.input_ids[:cut]], device=model.device)
        tokenizer = self.processing_class.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=sample.embedding[None].to(model.device),
            max_new_tokens=self.sample_max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        return tokenizer.decode(out[0, cut:], skip_special_tokens=True).strip()


def run_fingerprint(config: Any, width: int) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint: base architecture, LoRA and prefix shapes."""
    current = checkpoints.fingerprint(Path(config.model), config.stage, config)
    return {**current, "lora": config.lora, "prefix_tokens": config.prefix_tokens, "embed_dim": width}


def _plan(
    config: Any, resume: str | bool | None
) -> tuple[Path, str | None, dict[str, Any], ClipCapData, ClipCapData | None]:
    """The run directory, the checkpoint to resume (None: a fresh run), the fingerprint and the data;
    all checked before any model loads. A fresh run never overwrites another run's checkpoints."""
    output_dir = Path(config.output_dir)
    if isinstance(resume, str) and resume and resume != "auto":
        resumed = Path(resume)
        output_dir = resumed.parent if resumed.name.startswith("checkpoint-") else resumed
    if resume == "auto":
        resume = True if checkpoints.newest_complete(output_dir) is not None else None
    train_data = load_clipcap_dir(config.data)
    val_data = load_clipcap_dir(config.val_data) if config.val_data else None
    check_data(train_data, val_data)
    current = run_fingerprint(config, train_data.width)
    resume_from = checkpoints.resolve_resume(output_dir, resume, current)
    if resume_from is None and checkpoints.newest_complete(output_dir) is not None:
        raise ConfigError(
            f"{output_dir} already holds checkpoints of a run: add --resume to continue it, "
            "or choose another output_dir"
        )
    return output_dir, resume_from, current, train_data, val_data


def _trainer(
    config: Any,
    model: ClipCapModel,
    processor: Any,
    data: tuple[ClipCapData, ClipCapData | None],
    output_dir: Path,
) -> ClipCapTrainer:
    """The stage's ``ClipCapTrainer`` on the encoded samples, with every stage's arguments and callbacks."""
    from thinchat.train.trainer import add_callbacks, step_budget, training_arguments

    train = encode_samples(data[0], processor, config.prefix_tokens)
    val = encode_samples(data[1], processor, config.prefix_tokens) if data[1] is not None else []
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    budget = step_budget(config)
    trainer = ClipCapTrainer(
        model=model,
        args=training_arguments(config, output_dir, bool(val)),
        train_dataset=train,
        eval_dataset=val or None,
        data_collator=ClipCapCollator(pad),
        processing_class=processor,
        projector_lr=config.projector_lr,
        keep_checkpoints=config.save_total_limit,
        step_budget=budget,
        sample=val[0] if val else None,
        sample_max_new_tokens=config.sample_max_new_tokens,
    )
    add_callbacks(trainer, budget, output_dir)
    return trainer


def train_clipcap(config: Any, resume: str | bool | None = None) -> list[float]:
    """Run the stage for ``config`` (a ``ClipCapStageConfig``); writes ``output_dir``, returns the logged
    training losses."""
    from thinchat.train.config import config_dict
    from thinchat.train.trainer import cpu_settings

    output_dir, resume_from, current, train_data, val_data = _plan(config, resume)
    cpu_settings(config)
    torch.manual_seed(config.seed)  # the prefix and LoRA initialisation
    model, processor = build_model(config, train_data)
    output_dir.mkdir(parents=True, exist_ok=True)
    if resume_from is None and checkpoints.is_main_process():
        checkpoints.write_json_atomic(
            output_dir / checkpoints.RUN_META, {**current, "config": config_dict(config)}
        )
    trainer = _trainer(config, model, processor, (train_data, val_data), output_dir)
    trainer.train(resume_from_checkpoint=resume_from)
    if trainer.args.should_save:
        trainer.save_model(str(output_dir))  # prefix, adapter, processor
        trainer.state.save_to_json(str(output_dir / TRAINER_STATE))
        base_ref = os.path.relpath(Path(config.model).resolve(), output_dir.resolve())
        checkpoints.write_json_atomic(
            output_dir / "thinchat_checkpoint.json",
            {"base_model": base_ref, "stage": config.stage, "config": config_dict(config)},
        )
        log.info("wrote the ClipCap model (%d prefix tokens%s) to %s", config.prefix_tokens,
                 ", LoRA" if config.lora else "", output_dir)  # fmt: skip
    return [record["loss"] for record in trainer.state.log_history if "loss" in record]
