"""ClipCap prefix training: tokens widened to k, loss falls, prefix round-trips, Llava stays standard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from thinchat.errors import DataFormatError
from thinchat.testing import tiny_llava
from thinchat.train.clipcap import (
    ClipCapPrefix,
    load_clipcap_dir,
    prefix_inputs_embeds,
    tokenize_entry,
    train_clipcap,
)

CAPTIONS = ["Quartz grains are subrounded.", "Calcite cement is ferroan.", "Zircon and tourmaline are rare."]


def _clipcap_dir(tmp_path, n: int = 3):
    entries, tensors = [], {}
    for i in range(n):
        tensors[str(i)] = torch.randn(1, 512, generator=torch.Generator().manual_seed(i))
        entries.append(
            {
                "id": f"{i}_1",
                "image_embedding": str(i),
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe this thin section."},
                    {"from": "gpt", "value": CAPTIONS[i % len(CAPTIONS)]},
                ],
            }
        )
    (tmp_path / "conversations.json").write_text(json.dumps(entries), encoding="utf-8")
    save_file(tensors, str(tmp_path / "clip_embeddings.safetensors"))
    return tmp_path


def test_tokenize_widens_image_token_and_masks_labels():
    _, processor = tiny_llava("llama", "dinov2")
    conv = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Quartz."}]
    ids, labels = tokenize_entry(processor, conv, prefix_tokens=5)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert ids.count(image_id) == 5
    first = ids.index(image_id)
    assert ids[first : first + 5] == [image_id] * 5
    supervised = processor.tokenizer.decode([t for t in labels if t != -100])
    assert "Quartz." in supervised and "Describe" not in supervised and "<|im_end|>" in supervised


def test_train_prefix_loss_falls_and_roundtrips(tmp_path):
    model, processor = tiny_llava("llama", "dinov2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (tmp_path / "data").mkdir()
    data = _clipcap_dir(tmp_path / "data")
    out = tmp_path / "out"
    losses = train_clipcap(model, processor, data, out, prefix_tokens=4, max_steps=30, batch_size=3, lr=3e-3)
    # A frozen random 32-wide LM is nearly uniform (loss ~ ln(vocab)); the prefix alone moves it a little.
    # It still falls steadily (6.017 -> 5.999 here); the equality checks below test the wiring exactly.
    assert len(losses) == 30 and max(losses[-5:]) < min(losses[:3]) - 0.005
    # The Llava is untouched (still the standard checkpoint); only the prefix learned.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    prefix = ClipCapPrefix.load(out)
    assert prefix.config() == {"embed_dim": 512, "hidden": 32, "prefix_tokens": 4}
    entries, embeddings = load_clipcap_dir(data)
    ids, _ = tokenize_entry(processor, entries[0]["conversations"], 4)
    input_ids = torch.tensor([ids])
    emb = embeddings["0"]
    embeds = prefix_inputs_embeds(model, prefix, input_ids, emb)
    image_rows = embeds[0][input_ids[0] == model.config.image_token_id]
    torch.testing.assert_close(image_rows, prefix(emb)[0])
    with torch.no_grad():
        logits = model(inputs_embeds=embeds).logits
    assert torch.isfinite(logits).all()


def test_bad_clipcap_dirs(tmp_path):
    with pytest.raises(DataFormatError, match="import-clipcap"):
        load_clipcap_dir(tmp_path)
    data = _clipcap_dir(tmp_path)
    entries = json.loads((data / "conversations.json").read_text())
    entries[1]["image_embedding"] = "missing"
    (data / "conversations.json").write_text(json.dumps(entries))
    with pytest.raises(DataFormatError, match=r"entry 1 .*'missing'"):
        load_clipcap_dir(data)
    entries[1]["image_embedding"] = "1"
    entries[1]["conversations"][0]["value"] = "<image><image> two?"
    (data / "conversations.json").write_text(json.dumps(entries))
    with pytest.raises(DataFormatError, match="2 <image> placeholders"):
        load_clipcap_dir(data)


def test_thinchat_train_runs_the_clipcap_stage(tmp_path):
    from safetensors.torch import load_file

    from thinchat.cli import main
    from thinchat.errors import ConfigError
    from thinchat.train.config import ClipCapStageConfig, load_train_config

    model, processor = tiny_llava("llama", "dinov2")
    base = tmp_path / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    (tmp_path / "data").mkdir()
    data = _clipcap_dir(tmp_path / "data")
    out = tmp_path / "prefix"
    yaml_path = str(Path(__file__).resolve().parents[1] / "configs" / "clipcap_prefix.yaml")
    args = [f"model={base}", f"data={data}", f"output_dir={out}", "max_steps=3", "prefix_tokens=2"]
    config = load_train_config(yaml_path, args)
    assert isinstance(config, ClipCapStageConfig) and config.per_device_train_batch_size == 8
    assert main(["train", "--config", yaml_path, *args]) == 0
    assert load_file(str(out / "clipcap_prefix.safetensors"))  # weights as safetensors
    assert ClipCapPrefix.load(out).config()["prefix_tokens"] == 2
    meta = json.loads((out / "thinchat_checkpoint.json").read_text())
    assert meta["stage"] == "clipcap" and meta["base_model"] == str(base.resolve())
    with pytest.raises(ConfigError, match="import-clipcap` wrote"):
        load_train_config(yaml_path, [*args[:1], "data=train.json"])
    with pytest.raises(ConfigError, match="prefix_tokens"):
        load_train_config(yaml_path, [*args, "prefix_tokens=0"])
