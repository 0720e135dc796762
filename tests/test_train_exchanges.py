"""Isolated exchanges (turn_layout isolated): packing, the mask, and equality with per-exchange samples."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from train_helpers import save_tiny, tiny_overrides, write_dataset, write_typed_slide

from thinchat.errors import ConfigError, DataFormatError
from thinchat.testing import tiny_llava
from thinchat.train.data import Sample, split_turns
from thinchat.train.dataset import IGNORE_INDEX, Collator, SupervisedDataset
from thinchat.train.exchanges import (
    exchange_attention_mask,
    exchange_position_ids,
    isolate_exchanges,
    pack_exchanges,
)
from thinchat.train.sources import open_samples
from thinchat.train.trainer import logits_only_where_scored

IMG = 9
N = IGNORE_INDEX


def test_pack_keeps_the_shared_prefix_once_and_numbers_the_exchanges():
    parts = [
        ([1, IMG, IMG, 5, 6, 7], [N, N, N, N, 6, 7]),
        ([1, IMG, IMG, 8, 7], [N, N, N, N, 7]),
    ]
    ids, labels, exchanges = pack_exchanges(parts, IMG)
    assert ids == [1, IMG, IMG, 5, 6, 7, 8, 7]
    assert labels == [N, N, N, N, 6, 7, N, 7]
    assert exchanges == [0, 0, 0, 1, 1, 1, 2, 2]
    # a shared token that is already supervised in one exchange stays in that exchange
    same_start = [([1, IMG, 4, 5], [N, N, 4, 5]), ([1, IMG, 4, 6], [N, N, N, 6])]
    assert pack_exchanges(same_start, IMG)[2] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(DataFormatError, match="do not share their images"):
        pack_exchanges([([1, IMG, 5], [N, N, 5]), ([1, 4, IMG, 5], [N, N, N, 5])], IMG, "x.json: entry 0")


def test_mask_and_positions_isolate_each_exchange():
    exchanges = torch.tensor([[0, 0, 1, 1, 2, 2, -1]])
    mask = exchange_attention_mask(exchanges)[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],  # exchange 2 sees the prefix, not exchange 1
        [1, 1, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],  # padding sees itself only: no empty row
    ]
    assert exchange_position_ids(exchanges).tolist() == [[0, 1, 2, 3, 2, 3, 0]]
    two = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 3, 3], [0, 1, 1, 2, 2, 2, 2, -1, -1]])
    assert exchange_position_ids(two).tolist() == [[0, 1, 2, 3, 4, 5, 3, 3, 4], [0, 1, 2, 1, 2, 3, 4, 0, 0]]


def test_flash_attention_is_refused():
    ids = torch.zeros((1, 8), dtype=torch.long)
    flash = SimpleNamespace(
        config=SimpleNamespace(text_config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    )
    with pytest.raises(ConfigError, match="sdpa or eager"):
        isolate_exchanges(flash, {"exchange_ids": ids})
    with pytest.raises(ConfigError, match="sdpa or eager"):  # through a DDP / DeepSpeed wrapper
        isolate_exchanges(SimpleNamespace(module=flash), {"exchange_ids": ids})
    assert isolate_exchanges(flash, {"input_ids": ids}) == {"input_ids": ids}


def test_sliding_window_layers_get_their_own_mask():
    text = SimpleNamespace(
        _attn_implementation="sdpa", sliding_window=2, layer_types=["sliding_attention", "full_attention"]
    )
    exchanges = torch.tensor([[0, 0, 1, 1, 1]])
    masks = isolate_exchanges(
        SimpleNamespace(config=SimpleNamespace(text_config=text)), {"exchange_ids": exchanges}
    )["attention_mask"]
    assert masks["full_attention"][0, 0, 4].int().tolist() == [1, 1, 1, 1, 1]
    assert masks["sliding_attention"][0, 0, 4].int().tolist() == [0, 0, 0, 1, 1]  # positions 3, 4 of 0..4


def _slide(tmp_path):
    text = {
        "id": "t1",
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}],
    }
    return list(open_samples(write_typed_slide(tmp_path, extra=(text,))))


def _scored_logits(model, batch):
    inputs = logits_only_where_scored(isolate_exchanges(model, batch))
    inputs.pop("image_paths", None)
    with torch.no_grad():
        out = model(**inputs)
    return out.logits.reshape(-1, out.logits.shape[-1]), out.loss


@pytest.mark.parametrize(
    ("lm", "attention"),
    [("llama", "sdpa"), ("gemma3", "sdpa"), ("gemma3", "eager"), ("qwen2", "eager"), ("gpt2", "sdpa")],
)
def test_isolated_logits_equal_the_per_exchange_samples(lm, attention, tmp_path):
    model, processor = tiny_llava(lm, "dinov2")
    model.set_attn_implementation(attention)
    model.eval()
    slide, text = _slide(tmp_path)
    collate = Collator(processor.tokenizer.pad_token_id)
    packed = SupervisedDataset([slide, text], processor, 512, isolate_exchanges=True)
    single = SupervisedDataset(split_turns(slide, "per_exchange"), processor, 512)
    assert len(packed.items[0].input_ids) < sum(len(item.input_ids) for item in single.items)

    # the slide padded beside a shorter text-only sample: padding changes nothing, no NaN anywhere
    packed_logits, packed_loss = _scored_logits(model, collate([packed[0], packed[1]]))
    parts = [_scored_logits(model, collate([single[i]])) for i in range(len(single))]
    text_logits, _ = _scored_logits(model, collate([packed[1]]))
    expected = torch.cat([logits for logits, _ in parts] + [text_logits])
    assert packed_logits.shape == expected.shape
    torch.testing.assert_close(packed_logits, expected, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(packed_loss)

    # and the loss is the token-weighted mean of the per-exchange losses
    _, alone_loss = _scored_logits(model, collate([packed[0]]))
    counts = [sum(1 for t in item.labels if t != IGNORE_INDEX) for item in single.items]
    weighted = sum(loss * n for (_, loss), n in zip(parts, counts, strict=True)) / sum(counts)
    torch.testing.assert_close(alone_loss, weighted, rtol=1e-4, atol=1e-5)


def test_isolated_training_step_gives_finite_gradients(tmp_path):
    model, processor = tiny_llava("llama", "dinov2")
    slide, text = _slide(tmp_path)
    data = SupervisedDataset([slide, text], processor, 512, isolate_exchanges=True)
    batch = Collator(processor.tokenizer.pad_token_id)([data[0], data[1]])
    assert batch["exchange_ids"].shape == batch["input_ids"].shape
    assert set(batch["exchange_ids"][1].tolist()) == {0, -1}  # the text sample: one causal block, padded
    inputs = logits_only_where_scored(isolate_exchanges(model, batch))
    inputs.pop("image_paths")
    model(**inputs).loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_samples_without_turn_types_are_not_packed(tmp_path):
    slide, _ = _slide(tmp_path)
    _, processor = tiny_llava("llama", "dinov2")
    untyped = Sample("u", slide.messages, slide.images, slide.where)
    data = SupervisedDataset([untyped], processor, 512, isolate_exchanges=True)
    plain = SupervisedDataset([untyped], processor, 512)
    assert data.items[0].exchange_ids is None
    assert data.items[0].input_ids == plain.items[0].input_ids
    assert data[0]["exchange_ids"].tolist() == [0] * len(plain.items[0].input_ids)


def test_training_with_isolated_exchanges_and_the_feature_cache(tmp_path):
    from thinchat.train.config import load_train_config
    from thinchat.train.run import train

    data = write_dataset(tmp_path / "data", n=8, two_images=True, text_only=2)
    entries = json.loads(data.read_text(encoding="utf-8"))
    for entry in entries[:8]:
        mineral = entry["conversations"][1]["value"].split(".")[0].removeprefix("Mainly ")
        entry["conversations"] += [
            {"from": "human", "value": f"Is {mineral} present?"},
            {"from": "gpt", "value": f"Yes, {mineral}."},
        ]
        entry["turn_types"] = ["describe", "presence"]
    data.write_text(json.dumps(entries), encoding="utf-8")
    out = tmp_path / "lora"
    overrides = tiny_overrides(
        "lora",
        save_tiny(tmp_path / "base"),
        data,
        out,
        turn_layout="isolated",
        feature_cache=True,
        learning_rate=0.01,
        warmup_ratio=0,
        max_steps=6,
        val_data=data,
        eval_steps=6,
    )
    train(load_train_config(None, overrides))
    state = json.loads(sorted(out.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    evals = [entry["eval_loss"] for entry in state["log_history"] if "eval_loss" in entry]
    assert len(losses) == 6 and all(loss == loss for loss in losses + evals)  # no NaN
    assert losses[-1] < losses[0]
    assert (out / "adapter_config.json").is_file()
