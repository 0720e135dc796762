"""Image reliance: the answer loss with each sample's own images vs another sample's images."""

from __future__ import annotations

import json

import torch
from PIL import Image

from thinchat.eval import evaluate
from thinchat.eval.image_reliance import image_reliance
from thinchat.evalsample import EvalSample
from thinchat.testing import tiny_llava


def samples(tmp_path, n=4):
    out = []
    for i in range(n):
        path = tmp_path / f"s{i}.png"
        Image.new("RGB", (16, 16), (60 * i, 255 - 60 * i, 40)).save(path)
        out.append(
            EvalSample(
                id=f"s{i}",
                images=[path],
                image_names=[path.name],
                question="<image>\nDescribe.",
                references=[f"Quartz about {10 * i + 5}%, calcite cement."],
                lang="en",
            )
        )
    return out


def test_random_model_depends_on_its_images(tmp_path):
    model, processor = tiny_llava(seed=0)
    result = image_reliance(model.eval(), processor, samples(tmp_path))
    assert result["n_samples"] == 4 and result["answer_tokens"] > 0
    assert result["loss_own_images"] > 0 and result["loss_other_images"] > 0
    assert abs(result["gap"]) > 1e-4  # random weights: the pixels change the answer's likelihood
    assert result["gap"] == round(result["loss_other_images"] - result["loss_own_images"], 4)


def test_model_blind_to_images_has_zero_reliance(tmp_path):
    model, processor = tiny_llava(seed=0)
    with torch.no_grad():  # a zero projector makes every image the same constant tokens
        for p in model.model.multi_modal_projector.parameters():
            p.zero_()
    result = image_reliance(model.eval(), processor, samples(tmp_path))
    assert result["loss_own_images"] == result["loss_other_images"]
    assert result["gap"] == 0


def test_needs_two_samples_with_the_same_image_count(tmp_path):
    model, processor = tiny_llava(seed=0)
    assert image_reliance(model.eval(), processor, samples(tmp_path, n=1)) is None
    assert image_reliance(model.eval(), processor, samples(tmp_path, n=4), limit=1) is None


def test_samples_are_drawn_across_the_set(tmp_path, monkeypatch):
    # A class-sorted test file: the first 8 samples alone would all be of one class.
    import thinchat.eval.image_reliance as mod

    base = samples(tmp_path, n=4)
    items = [
        EvalSample(
            f"s{k}", base[k % 4].images, base[k % 4].image_names, "<image>\nDescribe.", [f"ref {k}"], "en"
        )
        for k in range(40)
    ]

    def scored(seed: int) -> list[int]:
        seen: list[int] = []

        def fake_loss(model, processor, messages, images):
            seen.append(int(messages[-1]["content"][0]["text"].split()[1]))
            return 1.0, 1

        monkeypatch.setattr(mod, "answer_loss", fake_loss)
        assert image_reliance(None, None, items, limit=8, seed=seed)["n_samples"] == 8
        return sorted(set(seen))

    first = scored(1)
    assert len(first) == 8 and max(first) >= 8  # not the first 8
    assert scored(1) == first  # seeded
    assert scored(2) != first


def test_evaluate_reports_reliance_per_checkpoint(tmp_path):
    model, processor = tiny_llava(seed=0)
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    entries = [
        {"id": s.id, "image": s.image_names[0],
         "conversations": [{"from": "human", "value": s.question}, {"from": "gpt", "value": s.references[0]}]}
        for s in samples(tmp_path)
    ]  # fmt: skip
    data = tmp_path / "test.json"
    data.write_text(json.dumps(entries), encoding="utf-8")
    kwargs = {"batch_size": 2, "max_new_tokens": 2, "meteor": "nltk", "device": "cpu"}
    report = evaluate({"base": str(tmp_path / "base")}, data, tmp_path / "out", reliance_samples=3, **kwargs)
    assert report["image_reliance"]["base"]["n_samples"] == 3
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "## Image reliance" in md and "| image reliance (difference) |" in md
    off = evaluate({"base": str(tmp_path / "base")}, data, tmp_path / "off", reliance_samples=0, **kwargs)
    assert "image_reliance" not in off
