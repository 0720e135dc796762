"""Tiny random Llava models for every supported LM family and vision tower, built offline in milliseconds.

Why in the package (not only in tests/): the training, chat, server and evaluation tests all need the
same small models, and downstream users writing plugins need them too. Tokenizers are trained on a
few sentences with the ``tokenizers`` library and carry each family's real special tokens, so chat
templates, label masks and stop tokens behave as with the real models.
"""

from __future__ import annotations

from typing import Literal

LMFamily = Literal["llama", "qwen2", "gemma3", "gpt2", "gpt2-chinese"]
Tower = Literal["clip", "siglip", "dinov2"]
LM_FAMILIES: tuple[str, ...] = ("llama", "qwen2", "gemma3", "gpt2", "gpt2-chinese")
TOWERS: tuple[str, ...] = ("clip", "siglip", "dinov2")

CORPUS = [
    "Describe this thin section. Quartz grains are subrounded with undulose extinction.",
    "Plagioclase shows polysynthetic twinning; K-feldspar is partly argillized. Calcite cement is ferroan.",
    "What accessory minerals are present? Zircon, tourmaline and leucoxene are rare.",
    "The argillaceous matrix is fibrous and mostly sericitized. Pores are about 5%.",
    "泥质呈纤维状、隐晶状，大部分已绢云母化，分布欠均。方解石呈粉晶-细晶状，含铁。",
    "硅质围绕颗粒分布。长石具粘土化。少见锆石、电气石等。碎屑长轴大致具定向性。",
    "石英约占45%，长石约占20%，白云石约占10%，孔隙约占5%。粒径0.25mm，次圆状。",
    "这张薄片中见到哪些副矿物？单偏光 正交偏光 黑云母 白云母 绿泥石 黄铁矿 石榴石",
]

_SPECIALS: dict[str, dict[str, str]] = {
    "llama": {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "qwen2": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "gemma3": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
    "gpt2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
}
_EXTRA_SPECIALS: dict[str, list[str]] = {
    "llama": ["<|im_start|>"],
    "qwen2": ["<|im_start|>"],
    "gemma3": ["<start_of_turn>", "<end_of_turn>"],
    "gpt2": [],
}


def tiny_tokenizer(family: str):
    """A fast tokenizer for ``family``: byte-level BPE, or BERT WordPiece over characters (Chinese GPT-2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import BertTokenizerFast, PreTrainedTokenizerFast

    if family == "gpt2-chinese":
        chars = sorted({c for line in CORPUS for c in line.lower() if not c.isspace()})
        words = sorted({w.strip(".,;?").lower() for line in CORPUS for w in line.split() if w.isascii()})
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys([*chars, *words])]
        return BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)

    specials = _SPECIALS[family]
    special_list = list(dict.fromkeys([*specials.values(), *_EXTRA_SPECIALS[family]]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special_list, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    extra = [t for t in _EXTRA_SPECIALS[family] if t not in specials.values()]
    return PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=extra, **specials)


def tiny_lm(family: str, vocab_size: int, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """A 2-layer, 32-wide causal LM of ``family``."""
    from transformers import (
        AutoModelForCausalLM,
        Gemma3TextConfig,
        GPT2Config,
        LlamaConfig,
        Qwen2Config,
    )

    common = {"vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64}
    if family == "llama":
        config = LlamaConfig(
            **common,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        )
    elif family == "qwen2":
        config = Qwen2Config(
            **common, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512
        )
    elif family == "gemma3":
        config = Gemma3TextConfig(
            **common,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=512,
            sliding_window=64,
        )
    elif family in ("gpt2", "gpt2-chinese"):
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=256,
            tie_word_embeddings=True,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
        )
    else:
        raise ValueError(f"unknown LM family {family!r}; choose from {LM_FAMILIES}")
    return AutoModelForCausalLM.from_config(config)


def tiny_tower(tower: str, image_size: int = 28):
    """A 2-layer, 32-wide vision tower with patch 14 and its image processor."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        CLIPVisionModel,
        Dinov2Config,
        Dinov2Model,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    from thinchat.model.dinov2_onnx import dinov2_image_processor

    common = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "patch_size": 14,
        "image_size": image_size,
    }
    if tower == "clip":
        processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
        return CLIPVisionModel(CLIPVisionConfig(**common)), processor
    if tower == "siglip":
        processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
        return SiglipVisionModel(SiglipVisionConfig(**common)), processor
    if tower == "dinov2":
        return Dinov2Model(Dinov2Config(**common)), dinov2_image_processor(image_size)
    raise ValueError(f"unknown tower {tower!r}; choose from {TOWERS}")


def tiny_llava(
    lm: str = "llama",
    tower: str = "dinov2",
    image_size: int = 28,
    seed: int = 0,
    pixel_shuffle: int = 1,
    max_tiles: int = 0,
):
    """``(LlavaForConditionalGeneration, LlavaProcessor)``: tiny, random, deterministic under ``seed``."""
    import torch

    from thinchat.model.compose import compose_llava

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(lm)
    vision_model, image_processor = tiny_tower(tower, image_size)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    language_model = tiny_lm(lm, vocab_size=len(tokenizer) + 1, bos_token_id=eos, eos_token_id=eos)
    model, processor, _ = compose_llava(
        vision_model,
        image_processor,
        language_model,
        tokenizer,
        pixel_shuffle=pixel_shuffle,
        max_tiles=max_tiles,
    )
    return model, processor


def enliven(module, seed: int = 0, scale: float = 0.5):
    """``module`` with its matrices redrawn at ``scale`` (seeded). Why: a random tiny model answers every
    prompt with the same token; larger weights make its answers depend on the image and the question,
    so tests comparing answers could fail."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=g) * scale)
    return module


def tiny_image(seed: int = 0, size: int = 32):
    """A random RGB PIL image."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
