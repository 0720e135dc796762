"""The keys both recipes (``thinchat quickstart``, ``thinchat finetune``) share: what the recipe reads
(``RecipeSettings``), the keys declared once with one default (``CommonRecipeConfig``) and those declared
once with a default per recipe (``*_field``).

Why apart from ``recipe``: ``recipe`` runs the steps; this module is only what a recipe can be told.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from thinchat.config import field
from thinchat.eval.question_following import question_probes_field


class RecipeSettings(Protocol):
    """The keys the recipe reads; ``QuickstartConfig`` and ``FinetuneConfig`` both have them."""

    lang: str
    out: str
    vision: str
    image_size: int
    feature_layer: int
    pixel_shuffle: int
    max_tiles: int
    seed: int
    tower_config: str
    projector_config: str
    lora_config: str
    train_overrides: list[str]
    eval_limit: int
    eval_batch_size: int
    max_new_tokens: int
    question_probes: int
    text_only_ratio: float
    reliance_samples: int
    stage2_seconds: float


def pixel_shuffle_field(default: int) -> Any:
    """The ``pixel_shuffle`` key of both recipes: one help, each recipe its measured default."""
    return field(
        default,
        help="fold each NxN block of the tower's patches into one image token (thinchat build "
        "--pixel-shuffle): 168 px with 2 costs the LM what 84 px costs (docs/experiments.md); 1: off",
    )


def tower_config_field(default: str, default_note: str) -> Any:
    """The ``tower_config`` key of both recipes: one help, each recipe its default and why."""
    return field(
        default,
        help="tower adaptation before stage 1 (configs/tower_cpu.yaml: LoRA on the tower, merged); empty: "
        f"frozen; {default_note}",
    )


@dataclass
class CommonRecipeConfig:
    """The recipe keys ``QuickstartConfig`` and ``FinetuneConfig`` share with the same default and help.

    Why a base class: each setting is declared once, so the quickstart (whose CI result vouches for the
    recipe) and the user's ``thinchat finetune`` cannot drift apart in what a key means or defaults to.
    Keys whose default or help differ between the two (``lang``, ``out``, the stage configs...) stay on
    each class.
    """

    llm: str = field("", help="LM spec (default: smollm2-135m-instruct for en, gemma3-270m for zh)")
    max_tiles: int = field(
        0,
        help="show each image larger than the tower's input as a global view plus up to N tiles (thinchat "
        "build --max-tiles): up to (1+N)x the LM's image tokens; 0: off, as the CPU recipes run",
    )
    seed: int = field(0, help="seed for the data and the training runs")
    train_overrides: list[str] = field([], help="extra key=value overrides for both stages")
    max_new_tokens: int = field(160, help="answer length limit in the report")
    question_probes: int = question_probes_field()

    #: Keys that older configs may still carry, and what took their place.
    REPLACED_KEYS: ClassVar[dict[str, str]] = {
        "reference_gflops": "use stage2_seconds (stage 2 times its own steps instead of a matmul rate)"
    }
