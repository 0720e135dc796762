"""The ``transformers.Trainer`` subclass: projector learning rate, feature-cache forward, safe checkpoints.

Why a subclass and not a training loop: Trainer already does DeepSpeed, gradient accumulation,
checkpoints with optimizer / scheduler / RNG state, resume, tensorboard, bf16 and evaluation. We only
change what Trainer cannot know: the projector's own learning rate, the forward pass from cached tower
features, a seeded length-grouped sampler (same data order after resume), and checkpoint completion.
"""

from __future__ import annotations

import errno
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from thinchat.errors import ThinchatError
from thinchat.train import checkpoints
from thinchat.train.config import TrainConfig
from thinchat.train.exchanges import isolate_exchanges

log = logging.getLogger(__name__)

EXTRA_KEYS = ("image_paths", "label_weights", "image_views")
IGNORE_INDEX = -100


def cpu_settings(config: TrainConfig) -> None:
    """Flush denormals (arithmetic on them is many times slower on x86 CPUs) and set the thread count."""
    torch.set_flush_denormal(True)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)


def logits_only_where_scored(inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` plus ``logits_to_keep`` / ``shift_labels`` so the LM head runs only where a label is.

    Why: the vocabulary projection and its softmax are computed for every position, yet only answer
    tokens carry a label; image tokens and the prompt are most of a sample. Llava's forward takes a
    boolean ``logits_to_keep`` mask (flattened logits) and its causal-LM loss takes pre-shifted
    labels, so the loss is the same number while the head runs on ~half the positions
    (docs/experiments.md, Training step cost).
    """
    import torch.nn.functional as F

    labels = inputs.get("labels")
    if labels is None or "logits_to_keep" in inputs or "shift_labels" in inputs:
        return inputs
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # what each position predicts
    keep = targets.ne(IGNORE_INDEX)
    return {**inputs, "logits_to_keep": keep, "shift_labels": targets[keep]}


def lm_loss(model: Any, inputs: dict[str, Any], weights: Any = None, num_items_in_batch: Any = None) -> Any:
    """The causal-LM loss of a batch, with a weight per label where ``weights`` is given.

    Sum of weight x token cross-entropy over the labelled positions, divided by the number of labelled
    tokens (``num_items_in_batch`` across gradient accumulation, as transformers' own loss), so with every
    weight 1 (``TrainConfig.verdict_loss_weight``) it is the plain loss. Where the LM head is a plain
    linear layer the model runs its head on no position and ``linear_cross_entropy`` computes head and
    loss in vocabulary chunks from the final hidden states (half the step of a 262k vocabulary); any
    other head runs only where a label is (``logits_only_where_scored``).
    """
    import torch.nn.functional as F

    from thinchat.model.unwrap import unwrap_llava
    from thinchat.train.linear_ce import fusable_head, linear_cross_entropy

    scored = logits_only_where_scored(inputs)
    del scored["labels"]  # the loss is computed here, from the pre-shifted labels
    targets, keep = scored.pop("shift_labels"), scored["logits_to_keep"]
    rows = None if weights is None else F.pad(weights[:, 1:].to(keep.device), (0, 1), value=0.0)[keep]
    llava = unwrap_llava(model)
    head = llava.get_output_embeddings()
    if fusable_head(head, llava.config.text_config.vocab_size):
        scored["logits_to_keep"] = torch.zeros_like(keep)  # the loss runs the head itself
        hidden = model(**scored, output_hidden_states=True).hidden_states[-1][keep]
        total = linear_cross_entropy(hidden, head.weight, targets, rows)
    else:
        logits = model(**scored).logits
        token_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets, reduction="none")
        total = token_loss.sum() if rows is None else (token_loss * rows).sum()
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    return total / count


def embed_cached_features(model: Any, inputs: dict[str, Any], feature_cache: Any) -> dict[str, Any]:
    """``inputs`` without the extra keys, with cached tower features merged into ``inputs_embeds``."""
    inputs = dict(inputs)
    extra = {key: inputs.pop(key) for key in EXTRA_KEYS if key in inputs}
    if feature_cache is not None and "pixel_values" not in inputs:
        from thinchat.train.embeds import merge_image_features

        paths = extra.get("image_paths") or []
        features = feature_cache.features_for(paths, extra.get("image_views")) if paths else None
        inputs["inputs_embeds"] = merge_image_features(model, inputs.pop("input_ids"), features)
    return inputs


def turn_images(model: Any, inputs: dict[str, Any], seed: int, step: int) -> dict[str, Any]:
    """``inputs`` with each sample's images turned by the view ``rotations: true`` draws for it at ``step``.

    One view per sample, for all its images (PPL and XPL show one field), drawn from ``seed``, ``step``
    and the sample's first image (``thinchat.train.augment.view_for``), so a resumed run turns alike. The
    pixel path turns ``pixel_values``; the cached path adds ``image_views`` for ``FeatureCache.features_for``.
    """
    from thinchat.model.unwrap import unwrap_llava
    from thinchat.train.augment import batch_views, rotate_rows

    paths = inputs.get("image_paths") or []
    if not paths:
        return inputs
    image_token = inputs["input_ids"] == unwrap_llava(model).config.image_token_id
    per_row = image_token.sum(dim=1).tolist()
    per_image = sum(per_row) // len(paths)
    views = batch_views(seed, step, paths, [n // per_image for n in per_row])
    inputs = dict(inputs)
    if inputs.get("pixel_values") is not None:
        inputs["pixel_values"] = rotate_rows(inputs["pixel_values"], views)
    else:
        inputs["image_views"] = views
    return inputs


def model_inputs(model: Any, inputs: dict[str, Any], feature_cache: Any) -> dict[str, Any]:
    """A collated batch as the model's keyword arguments: cached features merged, exchanges isolated.

    The one place the trainer and LoRA-GA's gradient estimate turn a batch into a forward call."""
    return isolate_exchanges(model, embed_cached_features(model, inputs, feature_cache))


def training_arguments(config: TrainConfig, output_dir: Path, has_eval: bool) -> Any:
    """``TrainingArguments`` from a stage config: the one mapping every stage (``clipcap`` too) trains by."""
    from transformers import TrainingArguments

    eval_steps = config.eval_steps or config.save_steps
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler_type,
        max_grad_norm=config.max_grad_norm,
        bf16=config.bf16,
        fp16=config.fp16,
        use_cpu=config.cpu,
        torch_compile=config.torch_compile,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        save_strategy="steps",
        save_steps=config.save_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        report_to=[r for r in config.report_to if r != "none"] or "none",
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=config.dataloader_num_workers,
        deepspeed=config.deepspeed,
        remove_unused_columns=False,
        label_names=["labels"],
        prediction_loss_only=True,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=False,
    )


def step_budget(config: TrainConfig) -> Any:
    """The ``time_budget_s`` step budget (``thinchat.train.time_budget.StepBudget``), or None without one.

    The trainer's scheduler and ``add_callbacks`` share the one object: it is measured by the callback
    and read by the schedule."""
    if config.time_budget_s <= 0:
        return None
    from thinchat.train.time_budget import StepBudget

    return StepBudget(config.time_budget_s, config.max_steps, config.budget_calibration_steps)


def add_callbacks(trainer: Trainer, budget: Any, output_dir: Path, callbacks: Any = ()) -> None:
    """thinchat's progress bar (tokens/s and loss) instead of Trainer's, the time budget's callback, and
    the caller's callbacks: what every stage's trainer shows and obeys."""
    from transformers import ProgressCallback

    from thinchat.train.time_budget import TimeBudgetCallback

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(TokensPerSecond())
    if budget is not None:
        trainer.add_callback(TimeBudgetCallback(budget, output_dir))
    for callback in callbacks:
        trainer.add_callback(callback)


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from ``seed + epoch``: the same order again when a run resumes."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class ThinchatTrainer(Trainer):
    """Trainer with a projector param group, cached-feature forward and crash-safe checkpoints.

    With ``feature_cache`` (a ``thinchat.train.feature_cache.FeatureCache``) batches carry no pixels:
    the tower features of ``image_paths`` come from the cache and ``merge_image_features`` runs the
    model's own projector, so the projector and the LM train exactly as on the pixel path. With
    ``rotation_seed`` each training sample's images are turned (``turn_images``) on either path.
    """

    #: A parameter whose name holds this trains at ``projector_lr`` (ClipCap's trainer: its prefix).
    projector_key = "multi_modal_projector"

    def __init__(
        self,
        *args: Any,
        projector_lr: float | None = None,
        keep_checkpoints: int = 2,
        lengths: list[int] | None = None,
        group_by_length: bool = False,
        feature_cache: Any = None,
        step_budget: Any = None,
        rotation_seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        #: ``rotations: true``: the seed of each training sample's view (None: images as they are)
        self.rotation_seed = rotation_seed
        self.step_budget = step_budget
        self.projector_lr = projector_lr
        self.keep_checkpoints = keep_checkpoints
        self.lengths = lengths
        self.group_by_length = group_by_length
        self.feature_cache = feature_cache

    def _get_train_sampler(self, train_dataset=None):
        if self.group_by_length and self.lengths is not None:
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return SeededLengthGroupedSampler(batch, self.lengths, self.args.data_seed or self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model=None):
        """Trainer's AdamW groups, with projector parameters split into their own learning rate."""
        if self.optimizer is not None or self.projector_lr is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                groups.setdefault((self.projector_key in name, name in decay), []).append(param)
        param_groups = []
        for (is_projector, decays), params in sorted(groups.items()):
            group = {"params": params, "weight_decay": self.args.weight_decay if decays else 0.0}
            if is_projector:
                group["lr"] = self.projector_lr
            param_groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None):
        """Trainer's scheduler, or with a ``step_budget`` (``thinchat.train.time_budget``) one that
        decays to the step count the budget chooses once the first steps are timed."""
        if self.step_budget is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        warmup = self.args.get_warmup_steps(num_training_steps)
        self.lr_scheduler = self.step_budget.scheduler(
            optimizer or self.optimizer, warmup, str(self.args.lr_scheduler_type.value)
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.get("label_weights")
        if self.rotation_seed is not None and model.training:  # evaluation sees the images as they are
            inputs = turn_images(model, inputs, self.rotation_seed, self.state.global_step)
        inputs = model_inputs(model, inputs, self.feature_cache)
        # evaluation drops the outputs; callers that keep them get every position's logits
        loss_only = not return_outputs or self.args.prediction_loss_only
        if inputs.get("labels") is None or not loss_only:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with self.accelerator.autocast():  # the loss runs the head: in the precision the forward runs in
            loss = lm_loss(model, inputs, weights, num_items_in_batch)
        loss = self.across_devices(loss, num_items_in_batch)
        return (loss, {}) if return_outputs else loss

    def across_devices(self, loss: Any, num_items_in_batch: Any) -> Any:
        """The loss scaled as ``Trainer.compute_loss`` scales its own: the token count is summed over the
        processes and DDP averages their gradients, so each process's loss is multiplied back."""
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            processes = self.accelerator.num_processes // self.get_tp_size()
            return loss * (processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        return loss

    def _save_checkpoint(self, model, trial) -> None:
        """Save, then mark complete, then rotate; a failed save names the last good checkpoint."""
        run_dir = Path(self._get_output_dir(trial=trial))
        step = self.state.global_step
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        from safetensors import SafetensorError

        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError, SafetensorError) as exc:
            # torch.save reports a full disk as a RuntimeError from its zip writer, safetensors as its own error.
            last = checkpoints.newest_complete(run_dir)
            full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc)
            full = full or shutil.disk_usage(run_dir).free < 64 * 2**20
            what = "the disk is full" if full else str(exc)
            raise ThinchatError(
                f"saving checkpoint-{step} in {run_dir} failed: {what}. The last complete checkpoint is "
                f"{last or 'none'}; free some space and run again with --resume"
            ) from exc
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            checkpoints.mark_complete(run_dir / f"checkpoint-{step}", step)
            checkpoints.rotate(run_dir, self.keep_checkpoints)


class TokensPerSecond(TrainerCallback):
    """A progress bar with loss, tokens/s (non-padding LM tokens, image tokens included) and ETA.

    Trainer's own ``train_tokens_per_second`` goes to the logs and tensorboard (``include_num_input_tokens_seen``);
    this bar replaces Trainer's ``ProgressCallback`` so the rate and the last loss stay visible.
    """

    def __init__(self) -> None:
        self.start_time: float | None = None
        self.start_tokens = 0
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        self.start_time = time.perf_counter()
        self.start_tokens = state.num_input_tokens_seen
        if state.is_world_process_zero:
            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="training",
                unit="step",
                dynamic_ncols=True,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.total = state.max_steps  # a time budget may set it after the first steps
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_postfix(self._postfix(state), refresh=False)

    def _rate(self, state) -> float:
        elapsed = time.perf_counter() - (self.start_time or time.perf_counter())
        return (state.num_input_tokens_seen - self.start_tokens) / elapsed if elapsed > 0 else 0.0

    def _postfix(self, state) -> dict[str, str]:
        postfix = {"tok/s": f"{self._rate(state):.0f}"}
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        if losses:
            postfix["loss"] = f"{losses[-1]:.4f}"
        return postfix

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            self.bar.set_postfix(self._postfix(state))
            shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items()}
            self.bar.write(f"step {state.global_step}: {shown}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
