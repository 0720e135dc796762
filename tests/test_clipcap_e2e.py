"""ThinGPT data end to end on tiny random models: pickle -> import --split -> train (LoRA) -> eval -> chat.

The "CLIP" here is a tiny random ``CLIPVisionModelWithProjection`` saved to a directory and named with
``--encoder``, standing in for ``openai/clip-vit-base-patch32`` (unreachable offline): the pickle's
embeddings are its ``image_embeds``, exactly as ThinGPT's ``process_flickr.py`` computes them with CLIP.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
from pathlib import Path

import pytest
import torch

from thinchat.cli import main
from thinchat.errors import ModelSpecError
from thinchat.testing import tiny_image, tiny_llava

REPO = Path(__file__).resolve().parents[1]
REPORTS = ["Quartz grains are subrounded.", "Calcite cement is ferroan.", "Zircon and tourmaline are rare."]


def tiny_clip(path: Path) -> Path:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=28, patch_size=14, projection_dim=16,
    )  # fmt: skip
    CLIPVisionModelWithProjection(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(
        path
    )
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Base Llava, tiny CLIP, slide images, their ThinGPT pickle, the split import and a trained run."""
    from transformers import AutoImageProcessor, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("clipcap")
    model, processor = tiny_llava("llama", "dinov2")
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    clip = tiny_clip(root / "clip")
    tower, pre = CLIPVisionModelWithProjection.from_pretrained(clip), AutoImageProcessor.from_pretrained(clip)
    (root / "slides").mkdir()
    captions, embeds = [], {}
    for i in range(12):
        image = tiny_image(i, size=28)
        image.save(root / "slides" / f"{i:03d}.png")
        with torch.no_grad():
            embeds[f"{i:03d}"] = tower(**pre(images=image, return_tensors="pt")).image_embeds  # (1, 16)
        captions.append((f"{i:03d}", REPORTS[i % 3]))
    with (root / "features.pkl").open("wb") as f:
        pickle.dump([captions, embeds], f)  # what process_flickr.py writes
    assert main(["data", "import-clipcap", str(root / "features.pkl"), "--out", str(root / "data"),
                 "--split", "0.75,0.25", "--encoder", str(clip)]) == 0  # fmt: skip
    args = [f"model={root / 'base'}", f"data={root / 'data' / 'train'}", f"val_data={root / 'data' / 'test'}",
            f"output_dir={root / 'run'}", "prefix_tokens=3", "max_steps=6", "save_steps=3",
            "per_device_train_batch_size=3", "learning_rate=5e-3", "sample_max_new_tokens=6"]  # fmt: skip
    assert main(["train", "--config", str(REPO / "configs" / "clipcap_prefix.yaml"), *args]) == 0
    return {"root": root, "run": root / "run", "test": root / "data" / "test" / "conversations.json"}


def test_import_split_and_training_outputs(world):
    test = json.loads(world["test"].read_text())
    train = json.loads((world["root"] / "data" / "train" / "conversations.json").read_text())
    assert len(test) == 3 and len(train) == 9
    assert (world["run"] / "adapter_config.json").is_file()  # LoRA on by default
    prefix = json.loads((world["run"] / "clipcap_prefix.json").read_text())
    assert prefix["encoder"] == str(world["root"] / "clip") and prefix["embed_dim"] == 16


def test_eval_report_on_stored_embeddings(world):
    out = world["root"] / "report"
    assert main(["eval", "--from_pretrained", str(world["run"]), "--data", str(world["test"]), "--out", str(out),
                 "--max-new-tokens", "6", "--meteor", "nltk"]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["scored"] == 3 and report["counts"]["skipped"] == 0
    rows = [json.loads(line) for line in (out / "generations_run.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(isinstance(r.get("answer", r.get("generation")), str) for r in rows)


def test_eval_refuses_mismatches(world, tmp_path):
    from thinchat.eval import evaluate

    with pytest.raises(ModelSpecError, match="only a checkpoint of the clipcap stage"):
        evaluate({"base": str(world["root"] / "base")}, world["test"], tmp_path / "r")
    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "conversations.json").write_text(world["test"].read_text())
    from safetensors.torch import load_file, save_file

    stored = load_file(str(world["test"].parent / "clip_embeddings.safetensors"))
    save_file({k: torch.zeros(1, 24) for k in stored}, str(wide / "clip_embeddings.safetensors"))
    with pytest.raises(ModelSpecError, match="24 wide but this ClipCap checkpoint takes 16-wide"):
        evaluate({"run": str(world["run"])}, wide / "conversations.json", tmp_path / "r2", reliance_samples=0)


def test_chat_one_turn_and_engine_on_a_new_image(world):
    from thinchat.commands.chat import add_arguments, run
    from thinchat.engine import ChatEngine

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    image = world["root"] / "slides" / "000.png"
    args = parser.parse_args(
        ["--from_pretrained", str(world["run"]), "--image", str(image), "--max-new-tokens", "5"]
    )
    out, err = io.StringIO(), io.StringIO()
    assert run(args, stdin=io.StringIO("Describe this thin section.\n"), stdout=out, stderr=err) == 0
    assert len(out.getvalue().splitlines()) == 1, err.getvalue()
    engine = ChatEngine.from_pretrained(world["run"])
    assert engine.image_seq_length == 3
    from PIL import Image

    first = engine.describe([Image.open(image)], "Describe this thin section.", max_new_tokens=5)
    again = "".join(engine.stream_messages(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this thin section."}]}],
        [Image.open(image)], max_new_tokens=5,
    ))  # fmt: skip
    assert isinstance(first, str) and again.strip() == first


def test_caption_folder(world, tmp_path):
    out = tmp_path / "captions.tsv"
    assert main(["caption", "--from_pretrained", str(world["run"]), "--images", str(world["root"] / "slides"),
                 "--out", str(out), "--max-new-tokens", "4"]) == 0  # fmt: skip
    assert len(out.read_text().splitlines()) == 13


def test_new_images_need_the_recorded_tower(world, tmp_path):
    from thinchat.model.loading import load_pretrained

    meta = world["run"] / "clipcap_prefix.json"
    saved = meta.read_text()
    try:
        meta.write_text(json.dumps({**json.loads(saved), "encoder": str(tmp_path / "gone" / "clip")}))
        _model, processor = load_pretrained(world["run"])  # loading works: stored embeddings need no tower
        with pytest.raises(
            ModelSpecError, match="cannot encode new images.*Imported embeddings need no tower"
        ):
            processor.image_processor([tiny_image(0)])
    finally:
        meta.write_text(saved)


def test_serve_and_web_demo_drive_the_clipcap_model(world):
    import base64

    import openai
    from PIL import Image

    from thinchat.engine import ChatEngine
    from thinchat.generation import GenerationSettings
    from thinchat.server import BackgroundServer, ServerSettings
    from thinchat.web.chat import WebChat

    image_path = world["root"] / "slides" / "001.png"
    engine = ChatEngine.from_pretrained(world["run"], settings=GenerationSettings(max_new_tokens=5))
    expected = engine.describe([Image.open(image_path)], "Describe this thin section.")
    uri = "data:image/png;base64," + base64.b64encode(image_path.read_bytes()).decode()
    with BackgroundServer(engine, ServerSettings()) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=60)
        reply = client.chat.completions.create(
            model=engine.name,
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": uri}},
                {"type": "text", "text": "Describe this thin section."}]}],
            max_tokens=5, temperature=0,
        )  # fmt: skip
    assert reply.choices[0].message.content.strip() == expected
    chat = WebChat(engine)
    outputs = list(
        chat.submit("Describe this thin section.", str(image_path), None, [], None, 0.0, 1.0, 5, "en")
    )
    history = outputs[-1][0]
    assert history[-1]["role"] == "assistant" and history[-1]["content"].strip() == expected


def test_export_merge_keeps_the_clipcap_model(world, tmp_path):
    from PIL import Image

    from thinchat.engine import ChatEngine

    out = tmp_path / "merged"
    assert main(["export", "--from_pretrained", str(world["run"]), "--merge", "--out", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "clipcap_prefix.json").is_file()
    assert not (out / "adapter_config.json").exists()
    image = Image.open(world["root"] / "slides" / "002.png")
    question = "Describe this thin section."
    original = ChatEngine.from_pretrained(world["run"]).describe([image], question, max_new_tokens=5)
    assert ChatEngine.from_pretrained(out).describe([image], question, max_new_tokens=5) == original
