"""The ``clipcap`` stage: ThinGPT/ClipCap pooled embeddings -> a prefix MLP + LoRA on the LM.

Why this shape: a ThinGPT pickle holds one pooled CLIP embedding per image, which no Llava projector can
turn into several different LM tokens; ClipCap's prefix MLP does (``thinchat.clipcap.prefix``). ThinGPT
also fine-tunes its GPT-2 (its "finetune" mode): a frozen LM behind a 10-token prefix does not learn a
100-character report style in a CPU budget, so LoRA (peft) on the LM's linear layers is on by default
(``lora: false`` gives ClipCap's frozen-LM mode). The prefix output reaches the Llava through
``mm_encoder_outputs``, the same hook the chat engine and ``thinchat eval`` use, so training and
generation run the one path (``thinchat.clipcap.model.ClipCapModel``).

The loop is small and explicit (the HF Trainer would save the frozen base with every checkpoint):
the LM head runs only where a label is (``logits_only_where_scored``), the labels cover the
end-of-turn token (generation stops there), ``checkpoint-N`` directories follow
``thinchat.train.checkpoints`` (completion marker, rotation, ``--resume``), and every ``eval_steps``
the held-out loss and one greedy sample are logged.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from pathlib import Path
from typing import Any

import torch

from thinchat.clipcap.data import ClipCapData, ClipCapSample, collate, encode_samples, load_clipcap_dir
from thinchat.clipcap.model import ClipCapModel
from thinchat.clipcap.prefix import ClipCapPrefix
from thinchat.errors import ConfigError, DataFormatError
from thinchat.train import checkpoints

log = logging.getLogger(__name__)

OPTIMIZER_STATE = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"


def prefix_inputs_embeds(
    model: Any, prefix: ClipCapPrefix, input_ids: torch.Tensor, embeddings: torch.Tensor
):
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


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """AdamW state as safetensors (``state.<param index>.<name>``); the hyper-parameters come from the config."""
    from safetensors.torch import save_file

    tensors = {
        f"state.{index}.{name}": value.detach().reshape(-1)
        if value.dim() == 0
        else value.detach().contiguous()
        for index, state in optimizer.state_dict()["state"].items()
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
    }
    save_file(tensors, str(path))


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import load_file

    reference = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(path)).items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value.reshape(()) if name == "step" else value
    optimizer.load_state_dict({"state": state, "param_groups": reference["param_groups"]})


class ClipCapRun:
    """One training run: model, prefix, optimizer, data order and the checkpoint files."""

    def __init__(self, model: Any, processor: Any, prefix: ClipCapPrefix, config: Any) -> None:
        from transformers import get_scheduler

        self.model, self.processor, self.prefix, self.config = model, processor, prefix, config
        trained = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": list(prefix.parameters()), "lr": config.projector_lr or config.learning_rate}]
        if trained:
            groups.append({"params": trained, "lr": config.learning_rate})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
        self.scheduler = get_scheduler(
            config.lr_scheduler_type,
            self.optimizer,
            num_warmup_steps=math.ceil(config.warmup_ratio * config.max_steps),
            num_training_steps=config.max_steps,
        )
        self.step = 0
        self.history: list[dict[str, Any]] = []
        from thinchat.generation import stop_token_ids

        self.adapter = ClipCapModel(model, prefix, stop_token_ids(model, processor.tokenizer))

    # ----- data order: epoch e is a shuffle seeded by (seed, e), so a resume continues it exactly ----
    def batch_indices(self, step: int, n: int) -> list[int]:
        size = self.config.per_device_train_batch_size
        per_epoch = max(1, math.ceil(n / size))
        epoch, position = divmod(step, per_epoch)
        order = list(range(n))
        random.Random(f"{self.config.seed}:{epoch}").shuffle(order)
        return order[position * size : (position + 1) * size]

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        from thinchat.train.trainer import logits_only_where_scored

        device = self.adapter.device
        inputs = logits_only_where_scored(
            {key: batch[key].to(device) for key in ("input_ids", "attention_mask", "labels")}
        )
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(self.config.bf16)):
            return self.adapter(pixel_values=batch["embeddings"].to(device), **inputs).loss

    def train_step(self, samples: list[ClipCapSample], pad: int) -> float:
        batch = collate([samples[i] for i in self.batch_indices(self.step, len(samples))], pad)
        self.model.train()
        loss = self.loss(batch)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def held_out(self, samples: list[ClipCapSample], pad: int) -> dict[str, Any]:
        """Mean loss over ``samples`` and one greedy answer for the first, for the log."""
        self.model.eval()
        size = self.config.per_device_eval_batch_size
        losses = [
            float(self.loss(collate(samples[i : i + size], pad))) * len(samples[i : i + size])
            for i in range(0, len(samples), size)
        ]
        first = samples[0]
        prompt = [t if lab == -100 else None for t, lab in zip(first.input_ids, first.labels, strict=True)]
        cut = prompt.index(None) if None in prompt else len(prompt)
        ids = torch.tensor([first.input_ids[:cut]], device=self.adapter.device)
        out = self.adapter.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=first.embedding[None].to(self.adapter.device),
            max_new_tokens=self.config.sample_max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=self.adapter.stop_ids or None,
        )
        text = self.processor.tokenizer.decode(out[0, cut:], skip_special_tokens=True).strip()
        return {"val_loss": round(sum(losses) / len(samples), 4), "sample_id": first.id, "sample": text}

    # ----- checkpoints ----------------------------------------------------------------------------
    def save(self, directory: Path, with_state: bool) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.prefix.save(directory)
        if hasattr(self.model, "peft_config"):
            self.model.save_pretrained(str(directory))
        if with_state:
            save_optimizer(self.optimizer, directory / OPTIMIZER_STATE)
            from safetensors.torch import save_file

            save_file({"torch": torch.get_rng_state()}, str(directory / "rng_state.safetensors"))
            checkpoints.write_json_atomic(
                directory / TRAINER_STATE, {"global_step": self.step, "log_history": self.history}
            )

    def load(self, directory: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        self.prefix.load_state_dict(ClipCapPrefix.load(directory).state_dict())
        if hasattr(self.model, "peft_config"):
            set_peft_model_state_dict(self.model, load_file(str(directory / "adapter_model.safetensors")))
        load_optimizer(self.optimizer, directory / OPTIMIZER_STATE)
        state = json.loads((directory / TRAINER_STATE).read_text(encoding="utf-8"))
        self.step, self.history = int(state["global_step"]), list(state["log_history"])
        for _ in range(self.step):  # the schedule is a pure function of the step
            self.scheduler.step()
        torch.set_rng_state(load_file(str(directory / "rng_state.safetensors"))["torch"])


def run_fingerprint(config: Any, width: int) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint: base architecture, LoRA and prefix shapes."""
    current = checkpoints.fingerprint(Path(config.model), config.stage, config)
    return {**current, "lora": config.lora, "prefix_tokens": config.prefix_tokens, "embed_dim": width}


def train_clipcap(config: Any, resume: str | bool | None = None) -> list[float]:
    """Run the stage for ``config`` (a ``ClipCapStageConfig``); writes ``output_dir``, returns the losses."""
    from tqdm import tqdm

    from thinchat.train.config import config_dict
    from thinchat.train.model_setup import load_base_dir
    from thinchat.train.trainer import cpu_settings

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
    cpu_settings(config)
    torch.manual_seed(config.seed)
    model, processor = load_base_dir(config.model, dtype=torch.float32)
    model.requires_grad_(False)
    hidden = model.get_input_embeddings().weight.shape[1]
    prefix = ClipCapPrefix(
        train_data.width, hidden, config.prefix_tokens, config.encoder or train_data.encoder
    )
    prefix.set_input_stats(torch.stack([t.reshape(-1) for t in train_data.embeddings.values()]))
    device = torch.device("cuda" if torch.cuda.is_available() and not config.cpu else "cpu")
    model, prefix = model.to(device), prefix.to(device)
    if config.lora:
        model = add_lora(model, config)
    run = ClipCapRun(model, processor, prefix, config)
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train = encode_samples(train_data, processor, config.prefix_tokens)
    val = encode_samples(val_data, processor, config.prefix_tokens) if val_data else []
    output_dir.mkdir(parents=True, exist_ok=True)
    if resume_from is not None:
        run.load(Path(resume_from))
        log.info("resumed %s at step %d", resume_from, run.step)
    else:
        checkpoints.write_json_atomic(
            output_dir / checkpoints.RUN_META, {**current, "config": config_dict(config)}
        )
    losses: list[float] = []
    eval_every = config.eval_steps or config.save_steps
    with tqdm(total=config.max_steps, initial=run.step, desc="clipcap", unit="step") as bar:
        while run.step < config.max_steps:
            losses.append(run.train_step(train, pad))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update(1)
            record: dict[str, Any] = {"step": run.step, "loss": round(losses[-1], 4)}
            if val and (run.step % eval_every == 0 or run.step == config.max_steps):
                record.update(run.held_out(val, pad))
                log.info("step %d: held-out loss %.4f; sample %s: %r", run.step, record["val_loss"],
                         record["sample_id"], record["sample"])  # fmt: skip
            elif run.step % config.logging_steps == 0:
                log.info("step %d: loss %.4f", run.step, losses[-1])
            run.history.append(record)
            if run.step % config.save_steps == 0 or run.step == config.max_steps:
                save_checkpoint(run, output_dir)  # the last one too: a later run can extend max_steps
    run.save(output_dir, with_state=False)
    processor.save_pretrained(str(output_dir))
    checkpoints.write_json_atomic(
        output_dir / TRAINER_STATE, {"global_step": run.step, "log_history": run.history}
    )
    base_ref = os.path.relpath(Path(config.model).resolve(), output_dir.resolve())
    checkpoints.write_json_atomic(
        output_dir / "thinchat_checkpoint.json",
        {"base_model": base_ref, "stage": config.stage, "config": config_dict(config)},
    )
    log.info("wrote the ClipCap model (%d prefix tokens%s) to %s", config.prefix_tokens,
             ", LoRA" if config.lora else "", output_dir)  # fmt: skip
    return losses


def save_checkpoint(run: ClipCapRun, output_dir: Path) -> None:
    """``checkpoint-N``: prefix, adapter, optimizer, RNG and log; complete once the marker is written."""
    directory = output_dir / f"checkpoint-{run.step}"
    run.save(directory, with_state=True)
    checkpoints.mark_complete(directory, run.step)
    checkpoints.rotate(output_dir, run.config.save_total_limit)
