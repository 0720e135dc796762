"""Train on ThinGPT/ClipCap pooled CLIP embeddings: a learned prefix mapping, fed through ``inputs_embeds``.

Why a separate prefix module and not a standard Llava projector: ``thinchat data import-clipcap`` gives
one pooled, projected CLIP ViT-B/32 embedding per image (shape (1, 512)), not the per-patch hidden states
a Llava tower produces. Llava's projector maps each tower token to one LM token with shared weights, so
it cannot turn one vector into k *different* prefix tokens, and the checkpoint's own tower (DINOv2 /
CLIP-L / SigLIP) would not produce these vectors from an image anyway. So this follows ClipCap itself:
an MLP maps the 512-d embedding to ``k x hidden`` prefix embeddings (512 -> k*hidden/2 -> k*hidden, tanh),
which take the place of the ``k`` ``<image>`` tokens through the same scatter as the feature cache path
(``thinchat.train.embeds.scatter_image_embeds``). The Llava checkpoint stays untouched and standard;
the prefix is saved next to it (``clipcap_prefix.safetensors`` + ``clipcap_prefix.json``) and used with
``inputs_embeds``. Trade-off: a ClipCap-trained model answers for images only when given their
ClipCap embeddings (computed with the same CLIP ViT-B/32); it is a way to reuse ThinGPT data, while
``thinchat train`` on images gives the model that chats about new slides. See docs/performance.md.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from thinchat.errors import DataFormatError
from thinchat.train.embeds import scatter_image_embeds, unwrap_llava

log = logging.getLogger(__name__)

PREFIX_WEIGHTS = "clipcap_prefix.safetensors"
PREFIX_CONFIG = "clipcap_prefix.json"
IGNORE_INDEX = -100


class ClipCapPrefix(nn.Module):
    """ClipCap's MLP mapping: (n, embed_dim) -> (n, prefix_tokens, hidden)."""

    def __init__(self, embed_dim: int, hidden: int, prefix_tokens: int = 10) -> None:
        super().__init__()
        self.embed_dim, self.hidden, self.prefix_tokens = embed_dim, hidden, prefix_tokens
        width = hidden * prefix_tokens
        self.mlp = nn.Sequential(nn.Linear(embed_dim, width // 2), nn.Tanh(), nn.Linear(width // 2, width))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        flat = embeddings.reshape(embeddings.shape[0], -1).to(self.mlp[0].weight.dtype)
        return self.mlp(flat).reshape(-1, self.prefix_tokens, self.hidden)

    def config(self) -> dict[str, int]:
        return {"embed_dim": self.embed_dim, "hidden": self.hidden, "prefix_tokens": self.prefix_tokens}

    def save(self, out_dir: str | Path) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(out / PREFIX_WEIGHTS))
        (out / PREFIX_CONFIG).write_text(json.dumps(self.config(), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> ClipCapPrefix:
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / PREFIX_CONFIG).is_file():
            raise DataFormatError(f"{directory}: no {PREFIX_CONFIG}; not a ClipCap prefix directory")
        prefix = cls(**json.loads((directory / PREFIX_CONFIG).read_text(encoding="utf-8")))
        prefix.load_state_dict(load_file(str(directory / PREFIX_WEIGHTS)))
        return prefix


@dataclass
class ClipCapSample:
    input_ids: list[int]
    labels: list[int]
    embedding: torch.Tensor  # (embed_dim,)


def load_clipcap_dir(data_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """``conversations.json`` entries and their embeddings, checked: every entry names an existing one."""
    from safetensors.torch import load_file

    data_dir = Path(data_dir)
    conv_file, emb_file = data_dir / "conversations.json", data_dir / "clip_embeddings.safetensors"
    for needed in (conv_file, emb_file):
        if not needed.is_file():
            raise DataFormatError(
                f"{needed}: missing; run `thinchat data import-clipcap FEATURES.pkl --out {data_dir}`"
            )
    try:
        entries = json.loads(conv_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{conv_file}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    embeddings = load_file(str(emb_file))
    if not isinstance(entries, list) or not entries:
        raise DataFormatError(f"{conv_file}: expected a non-empty JSON list of conversation entries")
    dims = {v.numel() for v in embeddings.values()}
    if len(dims) != 1:
        raise DataFormatError(
            f"{emb_file}: embeddings have different sizes {sorted(dims)}; expected one (e.g. 512)"
        )
    for index, entry in enumerate(entries):
        key = entry.get("image_embedding") if isinstance(entry, dict) else None
        if key not in embeddings:
            raise DataFormatError(
                f"{conv_file}: entry {index} ({entry.get('id', '?') if isinstance(entry, dict) else entry!r}) "
                f"names image_embedding {key!r}, which {emb_file.name} does not hold"
            )
        n_images = sum(turn.get("value", "").count("<image>") for turn in entry.get("conversations", []))
        if n_images != 1:
            raise DataFormatError(
                f"{conv_file}: entry {index} has {n_images} <image> placeholders; expected 1"
            )
    return entries, embeddings


def tokenize_entry(
    processor, conversations: list[dict[str, str]], prefix_tokens: int
) -> tuple[list[int], list[int]]:
    """Chat-template tokens with the one ``<image>`` widened to ``prefix_tokens``; labels on assistant turns."""
    from thinchat.conversation import llava_to_messages

    tokenizer = processor.tokenizer
    out = tokenizer.apply_chat_template(
        llava_to_messages(conversations),
        chat_template=processor.chat_template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    image_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    input_ids: list[int] = []
    labels: list[int] = []
    for token, keep in zip(out["input_ids"], out["assistant_masks"], strict=True):
        count = prefix_tokens if token == image_id else 1
        input_ids += [token] * count
        labels += [token if keep and token != image_id else IGNORE_INDEX] * count
    return input_ids, labels


def collate(samples: list[ClipCapSample], pad_token_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        ids[row, :n] = torch.tensor(sample.input_ids)
        labels[row, :n] = torch.tensor(sample.labels)
        mask[row, :n] = 1
    embeddings = torch.stack([s.embedding for s in samples])
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "embeddings": embeddings}


def prefix_inputs_embeds(
    model: Any, prefix: ClipCapPrefix, input_ids: torch.Tensor, embeddings: torch.Tensor
):
    """``inputs_embeds`` with the prefix mapping's output at the ``<image>`` tokens (k per embedding)."""
    return scatter_image_embeds(model, input_ids, prefix(embeddings))


def train_clipcap(
    model: Any,
    processor: Any,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    prefix_tokens: int = 10,
    max_steps: int = 100,
    batch_size: int = 4,
    lr: float = 2e-4,
    bf16: bool = True,
    seed: int = 0,
) -> list[float]:
    """Train a ClipCap prefix on ``data_dir`` with the Llava LM frozen (ClipCap's frozen-LM mode).

    Writes the prefix to ``out_dir`` and returns the per-step losses. ``model`` is any Llava (bare or
    peft-wrapped; its trainable parameters other than the prefix are left frozen here).
    """
    from tqdm import tqdm

    entries, embeddings = load_clipcap_dir(data_dir)
    llava = unwrap_llava(model)
    hidden = llava.get_input_embeddings().weight.shape[1]
    embed_dim = next(iter(embeddings.values())).numel()
    torch.manual_seed(seed)
    prefix = ClipCapPrefix(embed_dim, hidden, prefix_tokens)
    samples = []
    for entry in entries:
        ids, labels = tokenize_entry(processor, entry["conversations"], prefix_tokens)
        samples.append(ClipCapSample(ids, labels, embeddings[entry["image_embedding"]].reshape(-1).float()))
    model.requires_grad_(False)
    model.train()
    optimizer = torch.optim.AdamW(prefix.parameters(), lr=lr)
    order = random.Random(seed)
    pad = processor.tokenizer.pad_token_id
    losses: list[float] = []
    with tqdm(total=max_steps, desc="clipcap prefix", unit="step") as bar:
        while len(losses) < max_steps:
            indices = list(range(len(samples)))
            order.shuffle(indices)
            for start in range(0, len(indices), batch_size):
                batch = collate([samples[i] for i in indices[start : start + batch_size]], pad)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    embeds = prefix_inputs_embeds(model, prefix, batch["input_ids"], batch["embeddings"])
                    loss = model(
                        inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]
                    ).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                bar.update(1)
                if len(losses) >= max_steps:
                    break
    prefix.save(out_dir)
    processor.save_pretrained(str(out_dir))
    log.info("wrote ClipCap prefix (%d tokens) to %s", prefix_tokens, out_dir)
    return losses
