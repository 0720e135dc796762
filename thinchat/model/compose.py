"""Compose a vision tower and a causal LM into a standard transformers Llava checkpoint.

The result is a plain ``LlavaForConditionalGeneration`` plus a ``LlavaProcessor``: nothing of thinchat
is needed to load it, so peft, vLLM and every other transformers tool work on it. The projector is
Llava's ``mlp2x_gelu`` (linear, GELU, linear), randomly initialised until stage-1 training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from thinchat.errors import ModelSpecError, PromptTooLongError
from thinchat.model.chat_templates import TEMPLATES, choose_template, end_of_turn_token
from thinchat.model.resolve import TOWER_FEATURES

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
#: Room left for text after the image tokens, when checking an LM's position limit.
MIN_TEXT_TOKENS = 64


@dataclass
class BuildInfo:
    """What the composition decided, for logging and the model card."""

    vision_model_type: str
    lm_model_type: str
    chat_template: str
    image_seq_length: int
    max_positions: int | None


def max_positions(text_config) -> int | None:
    """The LM's position limit (GPT-2: 1024), or None when it has no hard limit we know of."""
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(text_config, name, None)
        if value:
            return int(value)
    return None


def input_size(image_processor) -> tuple[int, int]:
    """``(height, width)`` of the images the processor hands the tower (its crop where it crops)."""
    size = (
        image_processor.crop_size
        if getattr(image_processor, "do_center_crop", False)
        else image_processor.size
    )
    return size.get("height") or size.get("shortest_edge"), size.get("width") or size.get("shortest_edge")


def image_seq_length(vision_config, image_processor, pixel_shuffle: int = 1) -> int:
    """Image tokens per image: the tower's patches (less the CLS token it drops), over ``pixel_shuffle``^2.

    A factor other than 1 that does not divide the square patch grid (0 and negatives included) is
    refused, naming the factors that do."""
    from thinchat.model.projector import check_shuffle

    height, width = input_size(image_processor)
    _, strategy, extra = TOWER_FEATURES[vision_config.model_type]
    if pixel_shuffle != 1:
        grid = height // vision_config.patch_size
        if width // vision_config.patch_size != grid or extra != (1 if strategy == "default" else 0):
            raise ModelSpecError("pixel_shuffle needs a square patch grid and no extra image tokens")
        check_shuffle(grid, pixel_shuffle)
        return (grid // pixel_shuffle) ** 2
    tokens = (height // vision_config.patch_size) * (width // vision_config.patch_size) + extra
    return tokens - 1 if strategy == "default" else tokens


def check_fits(n_images: int, image_tokens: int, text_tokens: int, limit: int | None, tiles: int = 0) -> None:
    """Refuse, before any heavy work, a prompt that cannot fit the LM's positions.

    ``n_images`` counts every view the LM sees; ``tiles`` how many of them are tiles
    (:mod:`thinchat.model.tiling`), so the error can say that tiles are why.
    """
    if limit is None:
        return
    total = n_images * image_tokens + text_tokens
    if total > limit:
        why = f" ({tiles} of them tiles: lower --max-tiles)" if tiles else ""
        raise PromptTooLongError(
            f"{n_images} image(s){why} x {image_tokens} tokens + {text_tokens} text tokens = {total} > the "
            f"language model's {limit} positions; use fewer images, a smaller --image-size, or a shorter prompt"
        )


def check_feature_layer(vision_config, layer: int) -> int:
    """``layer`` if the tower has that hidden state (0 = patch embeddings, n = last block, -1 = last)."""
    n = int(vision_config.num_hidden_layers)
    if not -n <= layer <= n:
        raise ModelSpecError(
            f"vision feature layer {layer} does not exist: this {vision_config.model_type} tower has {n} blocks, "
            f"so use 1..{n} (or -{n}..-1 counted from the last block)"
        )
    return layer


def prepare_tokenizer(tokenizer) -> None:
    """Add ``<image>``, make sure a pad token exists, and drop ``token_type_ids`` (BERT-style tokenizers)."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    # generate() rejects token_type_ids, which Chinese GPT-2's BERT tokenizer returns by default.
    tokenizer.model_input_names = ["input_ids", "attention_mask"]


def resolve_template(tokenizer, template: str | None) -> str:
    """The chat template's name: ``template``, else the one the tokenizer's special tokens suggest; a
    tokenizer without an end-of-sequence token gets one for ``plain`` (its turns end with it)."""
    template = template or choose_template(tokenizer)
    if template not in TEMPLATES:
        raise ModelSpecError(f"unknown chat template '{template}'; choose one of {', '.join(TEMPLATES)}")
    if template == "plain" and tokenizer.eos_token is None:
        tokenizer.eos_token = tokenizer.sep_token or tokenizer.pad_token
    return template


def compose_llava(
    vision_model,
    image_processor,
    lm,
    tokenizer,
    template: str | None = None,
    feature_layer: int | None = None,
    pixel_shuffle: int = 1,
    max_tiles: int = 0,
):
    """Return ``(LlavaForConditionalGeneration, LlavaProcessor, BuildInfo)`` from loaded parts.

    ``feature_layer`` overrides the tower family's default hidden layer (``TOWER_FEATURES``);
    ``pixel_shuffle`` > 1 folds each ``f x f`` block of patches into one image token
    (:mod:`thinchat.model.projector`); ``max_tiles`` > 1 shows each large image as a global view plus
    up to that many tiles (:mod:`thinchat.model.tiling`), recorded in the config (absent when off).
    """
    from transformers import LlavaConfig, LlavaProcessor

    from thinchat.model import tiling
    from thinchat.model.projector import CONFIG_KEY, llava_class

    tiles = tiling.check_max_tiles(max_tiles) if max_tiles != 1 else 0  # 0 and 1: off, nothing recorded
    vision_config = vision_model.config
    if vision_config.model_type not in TOWER_FEATURES:
        raise ModelSpecError(f"unsupported vision tower type '{vision_config.model_type}'")
    default_layer, strategy, extra_tokens = TOWER_FEATURES[vision_config.model_type]
    feature_layer = check_feature_layer(
        vision_config, default_layer if feature_layer is None else feature_layer
    )
    prepare_tokenizer(tokenizer)
    template = resolve_template(tokenizer, template)

    text_config = lm.config
    embeddings = lm.get_input_embeddings()
    # Llava ties lm_head to `language_model.embed_tokens`; LMs that name it otherwise (GPT-2's `wte`)
    # fail at construction when tied, so untie them and copy the embedding into lm_head instead.
    base = lm.base_model
    untie = bool(getattr(text_config, "tie_word_embeddings", False)) and not hasattr(base, "embed_tokens")
    if untie:
        text_config.tie_word_embeddings = False

    n_image = image_seq_length(vision_config, image_processor, pixel_shuffle)
    limit = max_positions(text_config)
    check_fits(1 + tiles, n_image, MIN_TEXT_TOKENS, limit, tiles)

    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy,
        multimodal_projector_bias=True,
        image_seq_length=n_image,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
        **({CONFIG_KEY: pixel_shuffle} if pixel_shuffle > 1 else {}),
        **({tiling.CONFIG_KEY: tiles} if tiles else {}),
    )
    model = llava_class(config)(config)
    model.model.vision_tower.load_state_dict(vision_model.state_dict())
    model.model.language_model.load_state_dict(base.state_dict())
    output = lm.get_output_embeddings()
    model.lm_head.weight.data.copy_(embeddings.weight.data if untie else output.weight.data)

    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    stop = tokenizer.convert_tokens_to_ids(end_of_turn_token(template, tokenizer))
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    model.generation_config.eos_token_id = sorted({stop, *eos})

    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size * pixel_shuffle,  # the processor counts shuffled tokens
        vision_feature_select_strategy=strategy,
        chat_template=TEMPLATES[template],
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=extra_tokens,
    )
    info = BuildInfo(vision_config.model_type, text_config.model_type, template, n_image, limit)
    return model.eval(), processor, info


def build(
    vision: str,
    llm: str,
    out: str | Path,
    image_size: int | None = None,
    template: str | None = None,
    seed: int = 0,
    feature_layer: int | None = None,
    pixel_shuffle: int = 1,
    max_tiles: int = 0,
) -> BuildInfo:
    """Resolve both specs, compose, and save a standard Llava checkpoint to ``out``.

    ``seed`` fixes the random parts (projector initialisation, the ``<image>`` embedding row), so the same
    specs always give the same checkpoint and downstream runs are reproducible.
    """
    import torch

    from thinchat.model.resolve import classify, load_language_model, load_vision_tower
    from thinchat.model.tiling import check_max_tiles

    check_max_tiles(max_tiles)  # a bad value fails before anything loads
    classify(vision, "vision")  # fail on a bad spec before loading anything
    classify(llm, "lm")
    vision_model, image_processor = load_vision_tower(vision, image_size=image_size)
    if vision_model.config.model_type in TOWER_FEATURES:  # a bad pixel shuffle fails before the LM loads
        image_seq_length(vision_model.config, image_processor, pixel_shuffle)
    lm, tokenizer = load_language_model(llm)
    torch.manual_seed(seed)
    model, processor, info = compose_llava(
        vision_model,
        image_processor,
        lm,
        tokenizer,
        template,
        feature_layer=feature_layer,
        pixel_shuffle=pixel_shuffle,
        max_tiles=max_tiles,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    log.info(
        "wrote %s: %s + %s, %d image tokens from tower layer %d, template %s",
        out,
        vision,
        llm,
        info.image_seq_length,
        model.config.vision_feature_layer,
        info.chat_template,
    )
    return info
