"""Stage 1 then stage 2 on a tiny synthetic set: falling loss, the right outputs, load, export-merge."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import save_tiny, tiny_overrides, write_dataset

from thinchat.errors import ConfigError
from thinchat.train.config import load_train_config
from thinchat.train.run import train


def fixed_batch_loss(model, processor, data_path) -> float:
    """Mean loss of ``model`` over the whole tiny training set (pixel path, eval mode)."""
    from thinchat.train.dataset import Collator, SupervisedDataset
    from thinchat.train.sources import open_samples

    dataset = SupervisedDataset(list(open_samples(data_path)), processor, max_length=256)
    batch = Collator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    batch.pop("image_paths")
    with torch.no_grad():
        return model.eval()(**batch).loss.item()


def logged_losses(run_dir) -> list[float]:
    state = json.loads(sorted(run_dir.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    data = write_dataset(root / "data", n=8, text_only=2)
    val = write_dataset(root / "data", n=4, name="val.json", seed=1)
    text = root / "data" / "text.json"
    text.write_text(
        json.dumps(
            [
                {
                    "conversations": [
                        {"from": "human", "value": "What is sericite?"},
                        {"from": "gpt", "value": "Fine white mica."},
                    ]
                }
            ]
        )
    )
    base = save_tiny(root / "base")
    stage1 = train(
        load_train_config(
            None,
            tiny_overrides(
                "projector",
                base,
                data,
                root / "projector",
                learning_rate=0.05,
                warmup_ratio=0,
                max_steps=8,
                save_steps=4,
            ),
        )
    )
    stage2 = train(
        load_train_config(
            None,
            tiny_overrides(
                "lora",
                stage1,
                data,
                root / "lora",
                learning_rate=0.01,
                projector_lr=0.01,
                warmup_ratio=0,
                max_steps=8,
                save_steps=4,
                val_data=val,
                eval_steps=4,
                text_data=text,
                text_only_ratio=0.2,
                report_to="tensorboard",
            ),
        )
    )
    return {"root": root, "data": data, "base": base, "stage1": stage1, "stage2": stage2}


def test_stage1_trains_only_the_projector_and_lowers_the_loss(two_stages):
    from safetensors.torch import load_file

    from thinchat.model.loading import load_pretrained

    base = load_file(two_stages["base"] / "model.safetensors")
    after = load_file(two_stages["stage1"] / "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert changed and all("multi_modal_projector" in k for k in changed)
    model0, processor = load_pretrained(two_stages["base"])
    model1, _ = load_pretrained(two_stages["stage1"])  # a standard Llava directory: stage 2's base
    assert fixed_batch_loss(model1, processor, two_stages["data"]) < fixed_batch_loss(
        model0, processor, two_stages["data"]
    )


def test_stage2_writes_a_loadable_adapter_with_projector_and_falling_loss(two_stages):
    from safetensors.torch import load_file

    from thinchat.model.loading import load_pretrained

    out = two_stages["stage2"]
    meta = json.loads((out / "thinchat_checkpoint.json").read_text())
    assert (out / meta["base_model"]).resolve() == two_stages["stage1"].resolve()
    assert not meta["base_model"].startswith("/")
    keys = load_file(out / "adapter_model.safetensors").keys()
    assert any("multi_modal_projector" in k for k in keys) and any("lora_A" in k for k in keys)
    assert not any("vision_tower" in k for k in keys)
    assert (out / "processor_config.json").is_file() and (out / "chat_template.jinja").is_file()
    losses = logged_losses(out)
    assert len(losses) == 8 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05, losses
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert any("eval_loss" in entry for entry in state["log_history"])
    assert any("train_tokens_per_second" in entry for entry in state["log_history"])
    assert list(out.glob("runs/*/events.out.tfevents.*")), "tensorboard logs missing"

    model, processor = load_pretrained(out)
    stage1, _ = load_pretrained(two_stages["stage1"])
    data_loss = fixed_batch_loss(model, processor, two_stages["data"])
    assert data_loss < fixed_batch_loss(stage1, processor, two_stages["data"])


def test_export_merge_equals_the_unmerged_model(two_stages, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from thinchat.cli import main
    from thinchat.model.loading import load_pretrained

    out = tmp_path / "merged"
    assert main(["export", "--from_pretrained", str(two_stages["stage2"]), "--merge", "--out", str(out)]) == 0
    assert not (out / "adapter_config.json").exists()
    merged = LlavaForConditionalGeneration.from_pretrained(out).eval()  # plain transformers, no peft
    processor = AutoProcessor.from_pretrained(out)
    unmerged, _ = load_pretrained(two_stages["stage2"])
    stage1, _ = load_pretrained(two_stages["stage1"])
    from thinchat.train.dataset import Collator, SupervisedDataset
    from thinchat.train.sources import open_samples

    dataset = SupervisedDataset(list(open_samples(two_stages["data"])), processor, max_length=256)
    batch = Collator(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        a, b, c = merged(**kwargs).logits, unmerged(**kwargs).logits, stage1(**kwargs).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert (a - c).abs().max() > 1e-3, "the adapter changed nothing; the comparison would be vacuous"
    assert main(["export", "--from_pretrained", str(two_stages["stage2"]), "--out", str(tmp_path / "x")]) == 2


def test_export_merges_in_fp32_where_inference_would_run_bf16(two_stages, tmp_path, monkeypatch):
    """On a host whose bf16 matmuls measure faster, inference loads bf16 weights; an export must not:
    the adapter folded into bf16 weights is rounded to bf16 and no fp32 cast after brings it back."""
    from transformers import LlavaForConditionalGeneration

    from thinchat import precision
    from thinchat.cli import main
    from thinchat.model.loading import load_pretrained

    monkeypatch.setattr(precision, "inference_dtype", lambda device="cpu": torch.bfloat16)
    out = tmp_path / "merged"
    assert main(["export", "--from_pretrained", str(two_stages["stage2"]), "--merge", "--out", str(out)]) == 0
    merged = LlavaForConditionalGeneration.from_pretrained(out).eval()
    unmerged, processor = load_pretrained(two_stages["stage2"], dtype="float32")
    assert merged.dtype == torch.float32
    ids = processor.tokenizer("quartz and calcite", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = merged(input_ids=ids).logits, unmerged(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_projector_gets_its_own_learning_rate(two_stages):
    from transformers import TrainingArguments

    from thinchat.testing import tiny_llava
    from thinchat.train.stages import prepare_model
    from thinchat.train.trainer import ThinchatTrainer

    model, _ = tiny_llava("llama", "dinov2")
    model = prepare_model(model, load_train_config(None, ["stage=lora", "lora_r=4", "lora_alpha=8"]))
    args = TrainingArguments(
        output_dir=str(two_stages["root"] / "opt"), learning_rate=2e-4, use_cpu=True, report_to="none"
    )
    trainer = ThinchatTrainer(model=model, args=args, projector_lr=1e-3)
    groups = trainer.create_optimizer().param_groups
    ids = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        names = [ids[id(p)] for p in group["params"]]
        expected = 1e-3 if "multi_modal_projector" in names[0] else 2e-4
        assert group["lr"] == expected and all(
            ("multi_modal_projector" in n) == (expected == 1e-3) for n in names
        )
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)


def test_an_existing_run_needs_resume_and_another_model_is_refused(two_stages, tmp_path):
    data = two_stages["data"]
    with pytest.raises(ConfigError, match="already holds checkpoints.*--resume"):
        train(
            load_train_config(None, tiny_overrides("lora", two_stages["stage1"], data, two_stages["stage2"]))
        )
    other = save_tiny(tmp_path / "gemma", lm="gemma3", tower="siglip")
    with pytest.raises(ConfigError, match="trained from another model or stage.*text_model_type"):
        train(load_train_config(None, tiny_overrides("lora", other, data, two_stages["stage2"])), resume=True)
    with pytest.raises(ConfigError, match="lora_r: run has 8, config has 16"):
        train(
            load_train_config(
                None, [*tiny_overrides("lora", two_stages["stage1"], data, two_stages["stage2"]), "lora_r=16"]
            ),
            resume=True,
        )
    with pytest.raises(ConfigError, match="stage: run has 'lora', config has 'full'"):
        train(
            load_train_config(None, tiny_overrides("full", two_stages["stage1"], data, two_stages["stage2"])),
            resume=True,
        )


def test_loss_on_scored_positions_only_matches_the_full_loss():
    """The LM head on labelled positions only gives the same loss and gradients as on every position."""
    import torch

    from thinchat.testing import tiny_llava
    from thinchat.train.stages import prepare_model
    from thinchat.train.trainer import logits_only_where_scored

    model, _ = tiny_llava("llama", "dinov2")
    config = load_train_config(None, ["stage=lora", "lora_r=4", "lora_alpha=8", "lora_dropout=0"])
    model = prepare_model(model, config).eval()  # no dropout: both passes see the same network
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    input_ids = torch.randint(0, vocab - 1, (2, 12), generator=generator)
    labels = torch.full_like(input_ids, -100)
    labels[0, 5:10], labels[1, 7:12] = input_ids[0, 5:10], input_ids[1, 7:12]  # different answer spans
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 10:] = 0  # right padding
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    trainable = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(inputs):
        model.zero_grad()
        loss = model(**inputs, num_items_in_batch=torch.tensor(10)).loss
        loss.backward()
        return loss.detach(), [None if p.grad is None else p.grad.clone() for p in trainable]

    sliced = logits_only_where_scored(batch)
    # position t predicts label t + 1: 5 + 5 scored positions, ending one before each answer's end
    expected = [[0, t] for t in range(4, 9)] + [[1, t] for t in range(6, 11)]
    assert sliced["logits_to_keep"].nonzero().tolist() == expected
    assert sliced["shift_labels"].tolist() == input_ids[0, 5:10].tolist() + input_ids[1, 7:12].tolist()
    full_loss, full_grads = loss_and_grads(batch)
    part_loss, part_grads = loss_and_grads(sliced)
    assert torch.isfinite(full_loss) and full_loss > 0
    assert torch.allclose(full_loss, part_loss, atol=1e-6), (full_loss, part_loss)
    assert sum(float(g.abs().sum()) > 0 for g in full_grads if g is not None) > 4
    for a, b in zip(full_grads, part_grads, strict=True):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6)
    assert logits_only_where_scored({"input_ids": input_ids}) == {"input_ids": input_ids}


@pytest.mark.parametrize(
    ("stage", "bf16", "extra", "expected"),
    [
        ("lora", True, [], torch.bfloat16),  # CPU too: the frozen base need not be cast at every matmul
        ("lora", False, [], torch.float32),
        ("lora", True, ["base_dtype=float32"], torch.float32),  # the config asks for an fp32 base
        ("full", True, [], torch.float32),  # a saved whole model must not come out rounded to bf16
        ("projector", True, [], torch.float32),
    ],
)
def test_the_frozen_base_is_loaded_in_the_training_precision_only_for_lora(stage, bf16, extra, expected):
    from thinchat.train.stages import stage_for

    config = load_train_config(None, [f"stage={stage}", f"bf16={str(bf16).lower()}", "cpu=true", *extra])
    assert stage_for(config).load_kwargs(config)["dtype"] == expected


def test_base_dtype_rejects_an_unknown_precision():
    with pytest.raises(ConfigError, match="base_dtype"):
        load_train_config(None, ["stage=lora", "base_dtype=float16"])


def test_lora_on_a_bf16_base_trains_fp32_weights(tmp_path):
    from thinchat.train.stages import stage_for

    base = save_tiny(tmp_path / "base")
    config = load_train_config(None, [f"model={base}", "stage=lora", "bf16=true", "cpu=true"])
    stage = stage_for(config)
    model, _ = stage.load(config)
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    model = stage.prepare(model.requires_grad_(False), config)
    trained = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert trained and set(trained.values()) == {torch.float32}
    assert any("multi_modal_projector" in n for n in trained)
