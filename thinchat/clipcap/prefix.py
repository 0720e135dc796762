"""ClipCap's prefix mapping: one pooled image embedding -> ``k`` LM input embeddings.

Why not the Llava projector: a ThinGPT embedding is one pooled, projected CLIP vector per image, not
per-patch tower states; Llava's projector maps each tower token to one LM token with shared weights, so
it cannot turn one vector into ``k`` *different* tokens. ClipCap's MLP (``embed_dim -> k*hidden/2 ->
k*hidden``, tanh) does. The files sit next to the Llava checkpoint (or its LoRA adapter) and record
which tower made the embeddings, so a new image can be encoded the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from thinchat.errors import ModelSpecError

PREFIX_WEIGHTS = "clipcap_prefix.safetensors"
PREFIX_CONFIG = "clipcap_prefix.json"


def is_clipcap_dir(path: str | Path) -> bool:
    """True for a directory holding a ClipCap prefix (the output of the ``clipcap`` training stage)."""
    return (Path(path) / PREFIX_CONFIG).is_file()


class ClipCapPrefix(nn.Module):
    """ClipCap's MLP mapping: (n, embed_dim) -> (n, prefix_tokens, hidden)."""

    def __init__(
        self, embed_dim: int, hidden: int, prefix_tokens: int = 10, encoder: str | None = None
    ) -> None:
        super().__init__()
        self.embed_dim, self.hidden, self.prefix_tokens = embed_dim, hidden, prefix_tokens
        #: The tower that produced the embeddings (hub id or directory), for encoding new images.
        self.encoder = encoder
        width = hidden * prefix_tokens
        self.mlp = nn.Sequential(nn.Linear(embed_dim, width // 2), nn.Tanh(), nn.Linear(width // 2, width))
        # Input standardisation (training-set mean per dimension, one RMS scale), fixed before training.
        self.register_buffer("input_mean", torch.zeros(embed_dim))
        self.register_buffer("input_scale", torch.ones(()))

    def set_input_stats(self, embeddings: torch.Tensor) -> None:
        """Centre and scale inputs by the training embeddings' statistics.

        Why: pooled features of one kind of image (thin sections) share a large common component; the
        slide-to-slide differences that name the minerals are small next to it. Uncentred, the MLP first
        sees near-identical inputs and learns the average report; centred and scaled to unit RMS, the
        differences drive it from the first step. ThinGPT's CLIP embeddings get the same treatment.
        """
        flat = embeddings.reshape(embeddings.shape[0], -1).float()
        mean = flat.mean(dim=0)
        scale = (flat - mean).pow(2).mean().sqrt().clamp_min(1e-6)
        self.input_mean.copy_(mean)
        self.input_scale.copy_(scale)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        flat = embeddings.reshape(embeddings.shape[0], -1)
        if flat.shape[1] != self.embed_dim:
            raise ModelSpecError(
                f"embedding width {flat.shape[1]} does not match this ClipCap prefix ({self.embed_dim}, "
                f"embeddings of {self.encoder or 'the training data'}); use embeddings from the same tower"
            )
        flat = ((flat.float() - self.input_mean) / self.input_scale).to(self.mlp[0].weight.dtype)
        return self.mlp(flat).reshape(-1, self.prefix_tokens, self.hidden)

    def config(self) -> dict[str, int | str | None]:
        return {
            "embed_dim": self.embed_dim,
            "hidden": self.hidden,
            "prefix_tokens": self.prefix_tokens,
            "encoder": self.encoder,
        }

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
        if not is_clipcap_dir(directory):
            raise ModelSpecError(f"{directory}: no {PREFIX_CONFIG}; not a ClipCap prefix directory")
        try:
            raw = json.loads((directory / PREFIX_CONFIG).read_text(encoding="utf-8"))
            prefix = cls(
                int(raw["embed_dim"]), int(raw["hidden"]), int(raw["prefix_tokens"]), raw.get("encoder")
            )
            prefix.load_state_dict(load_file(str(directory / PREFIX_WEIGHTS)))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise ModelSpecError(f"{directory}: unreadable ClipCap prefix ({exc})") from exc
        return prefix.eval()
