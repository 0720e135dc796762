"""`thinchat finetune` on labelled images without training a model: class folders converted and split
within each class before any model loads, and the linear-probe ceiling attached to the report beside
the models (the end-to-end labels run is in test_finetune.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_finetune_image_folder_converts_class_folders_before_any_model(tmp_path, monkeypatch):
    import thinchat.recipes.finetune
    from thinchat.testing import tiny_image

    class StopError(Exception):
        pass

    def stop(*args, **kwargs):
        raise StopError

    monkeypatch.setattr(thinchat.recipes.finetune, "run_recipe", stop)
    for cls in ("calcite", "quartz"):
        for k in range(10):
            (tmp_path / "classes" / cls).mkdir(parents=True, exist_ok=True)
            tiny_image(seed=k + 20 * len(cls)).save(tmp_path / "classes" / cls / f"{k}.png")
    config = thinchat.recipes.finetune.FinetuneConfig(
        image_folder=str(tmp_path / "classes"), out=str(tmp_path / "o"), hardware="cpu"
    )
    with pytest.raises(StopError):
        thinchat.recipes.finetune.run_finetune(config)
    test = json.loads((tmp_path / "o" / "data" / "conversations_test.json").read_text(encoding="utf-8"))
    assert sorted(e["labels"][0] for e in test) == [
        "calcite",
        "calcite",
        "quartz",
        "quartz",
    ]  # a fifth of each
    assert all(e["id"] == f"{e['labels'][0]}_{Path(e['image'][0]).stem}" for e in test)


def _labelled_sample(ident: str, cls: str):
    from thinchat.evalsample import EvalSample

    return EvalSample(
        ident, [], [], "<image>\nDescribe.", [f"The image shows {cls}."], "en", [ident], labels=(cls,)
    )


def test_probe_is_attached_beside_the_models(tmp_path: Path) -> None:
    from thinchat.eval.report import build_report, write_report
    from thinchat.recipes.finetune import attach_class_probe

    samples = [_labelled_sample("a", "quartz"), _labelled_sample("b", "calcite")]
    answers = {"tuned": {"a": "Quartz.", "b": "Quartz."}}
    report, records = build_report(samples, [], answers, {"tuned": "ckpt"}, None)
    write_report(report, records, tmp_path)
    assert (tmp_path / "confusion.png").is_file()
    attach_class_probe(tmp_path, {"class_accuracy": 0.84, "n_test": 2, "detail": "dinov2-small at 84 px"})
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| linear probe on the tower's features (ceiling) | 0.84 |" in text
    assert json.loads((tmp_path / "report.json").read_text())["classes"]["probe"]["class_accuracy"] == 0.84
