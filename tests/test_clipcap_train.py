"""The clipcap stage: tokenisation, LoRA + prefix learning, held-out log, checkpoints and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from thinchat.clipcap.data import load_clipcap_dir, tokenize_entry
from thinchat.clipcap.prefix import ClipCapPrefix
from thinchat.clipcap.train import prefix_inputs_embeds
from thinchat.errors import ConfigError, DataFormatError
from thinchat.testing import tiny_llava

REPO = Path(__file__).resolve().parents[1]
YAML = str(REPO / "configs" / "clipcap_prefix.yaml")
CAPTIONS = ["Quartz grains are subrounded.", "Calcite cement is ferroan.", "Zircon and tourmaline are rare."]


def clipcap_dir(path: Path, n: int = 3, width: int = 512, start: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    entries, tensors = [], {}
    for i in range(start, start + n):
        tensors[str(i)] = torch.randn(1, width, generator=torch.Generator().manual_seed(i))
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
    (path / "conversations.json").write_text(json.dumps(entries), encoding="utf-8")
    save_file(tensors, str(path / "clip_embeddings.safetensors"))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    model, processor = tiny_llava("llama", "dinov2")
    path = tmp_path_factory.mktemp("base")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def train(base: Path, data: Path, out: Path, *extra: str, resume: bool = False) -> int:
    from thinchat.cli import main

    args = [f"model={base}", f"data={data}", f"output_dir={out}", "prefix_tokens=2", "per_device_train_batch_size=2",
            "val_data=null"]  # fmt: skip
    return main(["train", "--config", YAML, *args, *extra, *(["--resume"] if resume else [])])


def test_tokenize_widens_image_token_and_labels_stop_at_end_of_turn():
    _, processor = tiny_llava("llama", "dinov2")
    conv = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Quartz."}]
    ids, labels = tokenize_entry(processor, conv, prefix_tokens=5)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    first = ids.index(image_id)
    assert ids.count(image_id) == 5 and ids[first : first + 5] == [image_id] * 5
    supervised = processor.tokenizer.decode([t for t in labels if t != -100])
    assert "Quartz." in supervised and "Describe" not in supervised and "<|im_end|>" in supervised


def test_prefix_embeds_land_on_the_image_tokens():
    model, processor = tiny_llava("llama", "dinov2")
    prefix = ClipCapPrefix(512, 32, 4)
    ids, _ = tokenize_entry(processor, [{"from": "human", "value": "<image>\nDescribe."}], 4)
    input_ids = torch.tensor([ids])
    emb = torch.randn(1, 512)
    embeds = prefix_inputs_embeds(model, prefix, input_ids, emb)
    torch.testing.assert_close(embeds[0][input_ids[0] == model.config.image_token_id], prefix(emb)[0])


def test_bad_clipcap_dirs(tmp_path):
    with pytest.raises(DataFormatError, match="import-clipcap"):
        load_clipcap_dir(tmp_path)
    data = clipcap_dir(tmp_path / "d")
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
    mixed = {"a": torch.zeros(1, 512), "b": torch.zeros(1, 768)}
    save_file(mixed, str(data / "clip_embeddings.safetensors"))
    with pytest.raises(DataFormatError, match="different widths 512"):
        load_clipcap_dir(data)


def test_stage_trains_lora_and_prefix_logs_held_out_and_checkpoints(base, tmp_path):
    data, val = clipcap_dir(tmp_path / "train", 4), clipcap_dir(tmp_path / "val", 2, start=4)
    out = tmp_path / "run"
    assert (
        train(
            base,
            data,
            out,
            f"val_data={val}",
            "max_steps=4",
            "save_steps=2",
            "eval_steps=2",
            "learning_rate=5e-3",
        )
        == 0
    )
    assert (out / "adapter_config.json").is_file() and load_file(str(out / "adapter_model.safetensors"))
    assert ClipCapPrefix.load(out).config() == {
        "embed_dim": 512,
        "hidden": 32,
        "prefix_tokens": 2,
        "encoder": None,
    }
    lora = load_file(str(out / "adapter_model.safetensors"))
    assert any(
        "lora_B" in k and v.abs().sum() > 0 for k, v in lora.items()
    )  # LoRA B moved off zero: it learned
    assert all("language_model" in k for k in lora)  # LoRA only on the LM
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    held = [r for r in history if "eval_loss" in r]
    samples = [r for r in history if "sample" in r]
    assert [r["step"] for r in held] == [2, 4] and all(r["eval_loss"] > 0 for r in held)
    assert [r["step"] for r in samples] == [2, 4] and all(isinstance(r["sample"], str) for r in samples)
    assert {r["sample_id"] for r in samples} == {"4_1"}  # the first held-out slide
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "clipcap_prefix.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
    assert not (checkpoint / "model.safetensors").exists()  # never the frozen base
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    meta = json.loads((out / "thinchat_checkpoint.json").read_text())
    assert meta["stage"] == "clipcap" and (out / meta["base_model"]).resolve() == base.resolve()
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        from thinchat.train.config import load_train_config
        from thinchat.train.run import train as run_train

        run_train(
            load_train_config(YAML, [f"model={base}", f"data={data}", f"output_dir={out}", "val_data=null"])
        )


def test_resume_continues_exactly(base, tmp_path):
    data = clipcap_dir(tmp_path / "train", 5)
    common = ("lr_scheduler_type=constant", "save_steps=2", "learning_rate=5e-3", "lora_dropout=0.1")
    assert train(base, data, tmp_path / "straight", "max_steps=4", *common) == 0
    assert train(base, data, tmp_path / "cut", "max_steps=2", *common) == 0
    assert train(base, data, tmp_path / "cut", "max_steps=4", *common, resume=True) == 0
    for name in ("clipcap_prefix.safetensors", "adapter_model.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "cut" / name))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(ConfigError, match="prefix_tokens"):
        from thinchat.clipcap.train import train_clipcap
        from thinchat.train.config import load_train_config

        config = load_train_config(
            YAML,
            [
                f"model={base}",
                f"data={data}",
                f"output_dir={tmp_path / 'cut'}",
                "prefix_tokens=3",
                "val_data=null",
            ],
        )
        train_clipcap(config, resume=True)
    # A checkpoint of the earlier hand-written loop (optimizer state in safetensors) is refused by name.
    old = tmp_path / "cut" / "checkpoint-4"
    (old / "optimizer.pt").rename(old / "optimizer.safetensors")
    config = load_train_config(
        YAML,
        [
            f"model={base}",
            f"data={data}",
            f"output_dir={tmp_path / 'cut'}",
            "prefix_tokens=2",
            "max_steps=6",
            "val_data=null",
        ],
    )
    with pytest.raises(ConfigError, match="earlier thinchat"):
        train_clipcap(config, resume=str(old))


def test_frozen_lm_mode_and_config_errors(base, tmp_path):
    from thinchat.train.config import load_train_config

    data = clipcap_dir(tmp_path / "train", 3)
    before = load_file(str(base / "model.safetensors"))
    assert (
        train(base, data, tmp_path / "frozen", "max_steps=2", "lora=false", "gradient_accumulation_steps=2")
        == 0
    )
    assert json.loads((tmp_path / "frozen" / "trainer_state.json").read_text())["global_step"] == 2
    assert not (tmp_path / "frozen" / "adapter_config.json").exists()
    assert all(torch.equal(v, load_file(str(base / "model.safetensors"))[k]) for k, v in before.items())
    with pytest.raises(ConfigError, match="import-clipcap` wrote"):
        load_train_config(YAML, ["data=train.json"])
    with pytest.raises(ConfigError, match="prefix_tokens"):
        load_train_config(YAML, ["prefix_tokens=0"])
    wide = clipcap_dir(tmp_path / "wide", 2, width=768)
    with pytest.raises(DataFormatError, match="768 wide"):
        from thinchat.train.run import train as run_train

        run_train(
            load_train_config(
                YAML, [f"model={base}", f"data={data}", f"val_data={wide}", f"output_dir={tmp_path / 'w'}"]
            )
        )


def test_head_only_on_answer_positions_gives_the_full_loss(base, tmp_path):
    """The stage's loss (LM head on labelled positions only) equals the plain full-logits loss."""
    from thinchat.clipcap.data import encode_samples
    from thinchat.clipcap.train import ClipCapCollator, build_model, scored_forward
    from thinchat.train.config import load_train_config

    data = load_clipcap_dir(clipcap_dir(tmp_path / "train", 3))
    config = load_train_config(
        YAML, [f"model={base}", f"data={data.directory}", "val_data=null", "prefix_tokens=2"]
    )
    model, processor = build_model(config, data)
    batch = ClipCapCollator(processor.tokenizer.pad_token_id)(encode_samples(data, processor, 2))
    model.eval()
    with torch.no_grad():
        fast = scored_forward(model, batch).loss
        full = model(**batch)
    assert full.logits.shape[1] == batch["input_ids"].shape[1]  # the plain call scores every position
    torch.testing.assert_close(fast, full.loss)
