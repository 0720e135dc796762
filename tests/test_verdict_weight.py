"""``verdict_loss_weight``: the first token of each yes/no answer weighs more in the stage-2 loss."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from train_helpers import save_tiny, tiny_overrides, write_typed_slide

from thinchat.errors import ConfigError
from thinchat.testing import tiny_llava
from thinchat.train.config import load_train_config
from thinchat.train.dataset import IGNORE_INDEX, Collator, SupervisedDataset, verdict_weights
from thinchat.train.sources import open_samples
from thinchat.train.trainer import lm_loss, logits_only_where_scored, model_inputs

X = IGNORE_INDEX


def test_the_first_token_of_each_verdict_answer_is_weighted():
    labels = [X, X, 5, 6, X, X, 7, 8, 9, X, 10, 11]
    weights = verdict_weights(labels, ["presence", "describe", "presence"], 4.0)
    assert weights == [1, 1, 4, 1, 1, 1, 1, 1, 1, 1, 4, 1]
    assert verdict_weights(labels, None, 4.0) == [1.0] * len(labels)  # text-only replay: no types
    assert verdict_weights(labels[:8], ["describe", "presence", "presence"], 3.0)[6] == 3.0  # truncated


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("verdict")
    model, processor = tiny_llava("llama", "dinov2")
    model.eval()
    samples = list(open_samples(write_typed_slide(root)))
    return model, processor, samples, root


def test_the_dataset_weights_the_token_that_says_no(tiny):
    _, processor, samples, _ = tiny
    item = SupervisedDataset(samples, processor, 512, verdict_weight=5.0)[0]
    weighted = (item["label_weights"] == 5.0).nonzero().flatten().tolist()
    assert len(weighted) == 1  # one presence turn of three
    said = processor.tokenizer.decode(item["input_ids"][weighted[0] :]).lstrip()
    assert said.startswith("No, there is no calcite")
    assert "label_weights" not in SupervisedDataset(samples, processor, 512)[0]  # weight 1: plain batches


def test_weight_one_is_the_plain_loss_and_a_weight_adds_the_verdict_again(tiny):
    model, processor, samples, _ = tiny
    collate = Collator(processor.tokenizer.pad_token_id)
    batch = collate([SupervisedDataset(samples, processor, 512, verdict_weight=3.0)[0]])
    weights = batch["label_weights"]
    inputs = model_inputs(model, batch, None)
    with torch.no_grad():
        plain = model(**logits_only_where_scored(inputs)).loss
        assert torch.allclose(lm_loss(model, inputs, torch.ones_like(weights)), plain, atol=1e-6)
        assert torch.allclose(lm_loss(model, inputs), plain, atol=1e-6)
        weighted = lm_loss(model, inputs, weights)
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits[0]
    labels = batch["labels"][0]
    verdict = int((weights[0] == 3.0).nonzero())
    verdict_loss = F.cross_entropy(logits[verdict - 1 : verdict], labels[verdict : verdict + 1])
    n = int(labels[1:].ne(IGNORE_INDEX).sum())
    assert torch.allclose(weighted, plain + 2.0 * verdict_loss / n, atol=1e-5)


def test_training_with_a_verdict_weight_runs_and_is_validated(tiny, tmp_path):
    from thinchat.train.run import train

    _, _, _, root = tiny
    base = save_tiny(tmp_path / "base")
    overrides = tiny_overrides("lora", base, root / "train.json", tmp_path / "run", max_steps=2)
    train(load_train_config(None, [*overrides, "verdict_loss_weight=4", "group_by_length=false"]))
    state = json.loads(sorted((tmp_path / "run").glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    losses = [row["loss"] for row in state["log_history"] if "loss" in row]
    assert losses and all(loss == loss and loss > 0 for loss in losses)
    with pytest.raises(ConfigError, match="verdict_loss_weight"):
        load_train_config(None, ["stage=lora", "verdict_loss_weight=-1"])
