"""One 2000 x 1500 photograph through every interface of a tiled checkpoint (issue #31).

The chat CLI, the web demo, the OpenAI-compatible server, batch captioning and evaluation are each driven
as a user drives them, with the same JPEG and the same question, on a tiny checkpoint built with
``max_tiles=4``. One spy on the Llava model (``LlavaModel.forward`` and ``get_image_features``, the
layer every path reaches, whether images come as pixels or as the engine's pre-computed features)
records what the model was given; each test asserts the model saw the photo's global view plus its
tiles (image tokens, views, pixel shapes), and that the pixels are the same tensor whichever interface
sent the photo: one processor everywhere.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from PIL import Image

from thinchat.model.tiling import tile_count, tile_grid
from thinchat.testing import tiny_image, tiny_llava

QUESTION = "Describe this thin section."  # a description question: no interface looks first
WIDTH, HEIGHT = 2000, 1500
MAX_TILES = 4
TOWER = 28  # the tiny tower's input side: 4 image tokens per view


@pytest.fixture(scope="module")
def tiled_dir(tmp_path_factory):
    """A saved tiny Llava (28 px, 4 image tokens per view) built with max_tiles=4."""
    model, processor = tiny_llava("llama", "dinov2", image_size=TOWER, max_tiles=MAX_TILES)
    path = tmp_path_factory.mktemp("tiled")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def photo_path(tmp_path_factory):
    """The user's photograph: a 2000 x 1500 JPEG (colour blocks: cheap to make, small to send)."""
    folder = tmp_path_factory.mktemp("slides")
    path = folder / "photo.jpg"
    tiny_image(0, 8).resize((WIDTH, HEIGHT), Image.NEAREST).save(path, quality=90)
    return path


@dataclass(frozen=True)
class Expected:
    n_views: int  # per image: the global view and the tiles of the grid ``tile_grid`` picks
    per_view: int  # image tokens per view
    image_token_id: int


@pytest.fixture(scope="module")
def expected(tiled_dir) -> Expected:
    from transformers import LlavaConfig

    config = LlavaConfig.from_pretrained(tiled_dir)
    n_views = 1 + tile_count(tile_grid(WIDTH, HEIGHT, MAX_TILES, TOWER))
    assert n_views == 5  # 4:3 at a cap of 4: the 2 x 2 grid
    return Expected(n_views, int(config.image_seq_length), int(config.image_token_id))


@dataclass
class Seen:
    """What the Llava model was given, call by call (the server answers in another thread)."""

    #: per forward that carried images: (input_ids, image features or pixel rows it got)
    forwards: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    #: per vision-tower run: the pixel_values it encoded
    pixels: list[torch.Tensor] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def seen(monkeypatch):
    """Spy on ``LlavaModel``: the engine's features (``get_image_features`` then ``mm_encoder_outputs``)
    and a plain forward with ``pixel_values`` (evaluation's image reliance) both pass through it."""
    from transformers.models.llava.modeling_llava import LlavaModel

    record = Seen()
    forward, get_image_features = LlavaModel.forward, LlavaModel.get_image_features

    def spy_forward(self, *args: Any, **kwargs: Any):
        encoded = kwargs.get("mm_encoder_outputs") or {}
        pixels = kwargs.get("pixel_values")
        if encoded.get("image") is not None:
            views = len(encoded["image"].pooler_output)
        elif pixels is not None:
            views = int(pixels.shape[0])
        else:
            views = 0
        if views:
            with record.lock:
                record.forwards.append((kwargs["input_ids"].detach().cpu().clone(), views))
        return forward(self, *args, **kwargs)

    def spy_features(self, pixel_values, *args: Any, **kwargs: Any):
        with record.lock:
            record.pixels.append(pixel_values.detach().cpu().clone())
        return get_image_features(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(LlavaModel, "forward", spy_forward)
    monkeypatch.setattr(LlavaModel, "get_image_features", spy_features)
    return record


@pytest.fixture(scope="module")
def reference(tiled_dir, photo_path):
    """The prompt for the photo and the question, and the photo's views as the checkpoint's processor
    encodes them, global view first (the chat engine's own prompt builder: what every interface must
    hand the model)."""
    from thinchat.engine import ChatEngine
    from thinchat.images import load_image

    engine = ChatEngine.from_pretrained(tiled_dir, device="cpu")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    photo = load_image(photo_path)
    ids, views = engine.prompts.encode_views(messages, [photo], 4)
    encode = engine.processor.image_processor
    pixels = encode(images=views, return_tensors="pt")["pixel_values"]
    assert torch.equal(pixels[0], encode(images=[photo], return_tensors="pt")["pixel_values"][0])
    assert not any(torch.equal(pixels[0], tile) for tile in pixels[1:])  # the tiles are crops, not it
    return ids, pixels


def check_tiled(seen: Seen, expected: Expected, reference, *, rows: int = 1) -> None:
    """The model got the photo as its global view plus tiles in every forward that carried images
    (``rows`` prompts of one photo each), and the vision tower encoded exactly the reference pixels."""
    _, ref_pixels = reference
    assert seen.forwards, "no forward carried the photo"
    for ids, views in seen.forwards:
        per_row = (ids == expected.image_token_id).sum(dim=1).tolist()
        assert per_row == [expected.n_views * expected.per_view] * rows
        assert views == rows * expected.n_views
    assert seen.pixels, "the vision tower never ran"
    for pixels in seen.pixels:
        assert tuple(pixels.shape) == (expected.n_views, 3, TOWER, TOWER)
        assert torch.equal(pixels, ref_pixels)


def assert_same_prompt(seen: Seen, reference) -> None:
    """The one prompt the interface sent is the engine's prompt for the photo and the question."""
    ref_ids, _ = reference
    [(ids, _)] = seen.forwards  # one prefill with the images, then one token at a time
    assert torch.equal(ids[0], ref_ids)


def test_chat_cli(tiled_dir, photo_path, seen, expected, reference):
    from thinchat.commands.chat import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--from_pretrained", str(tiled_dir), "--image", str(photo_path), "--max-new-tokens", "3",
            "--device", "cpu", "--jsonl"]  # fmt: skip
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    assert run(args, stdin=io.StringIO(QUESTION + "\n"), stdout=out, stderr=err) == 0, err.getvalue()
    assert "answer" in json.loads(out.getvalue().splitlines()[0])
    check_tiled(seen, expected, reference)
    assert_same_prompt(seen, reference)


def test_web_demo(tiled_dir, photo_path, seen, expected, reference):
    from thinchat.engine import ChatEngine
    from thinchat.web.chat import WebChat

    chat = WebChat(ChatEngine.from_pretrained(tiled_dir, device="cpu"), look_first=True)
    sliders = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 3}
    *_, (history, _, _) = chat.submit(QUESTION, str(photo_path), None, [], None, *sliders.values(), "en")
    assert history[0]["content"].endswith(QUESTION) and len(history) == 2
    check_tiled(seen, expected, reference)
    assert_same_prompt(seen, reference)


def test_openai_server(tiled_dir, photo_path, seen, expected, reference):
    import httpx

    from thinchat.engine import ChatEngine
    from thinchat.images import image_key, load_image
    from thinchat.model.tiling import tile_views
    from thinchat.server.runner import BackgroundServer

    engine = ChatEngine.from_pretrained(tiled_dir, device="cpu")
    uri = "data:image/jpeg;base64," + base64.b64encode(photo_path.read_bytes()).decode()
    content = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": QUESTION}]
    body = {"model": engine.name, "max_tokens": 3, "messages": [{"role": "user", "content": content}]}
    with BackgroundServer(engine) as server:
        reply = httpx.post(f"{server.url}/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    ref_ids, _ = reference
    assert reply.json()["usage"]["prompt_tokens"] == len(ref_ids)
    check_tiled(seen, expected, reference)
    assert_same_prompt(seen, reference)
    # The engine keeps each view's features under its own pixel hash: the global view and each tile.
    views = tile_views(load_image(photo_path), MAX_TILES, TOWER)
    assert set(engine._features) == {image_key(v) for v in views}
    assert len(engine._features) == expected.n_views


def test_batch_captioning(tiled_dir, photo_path, seen, expected, reference, tmp_path):
    from thinchat.cli import main

    out = tmp_path / "captions.jsonl"
    argv = ["caption", "--from_pretrained", str(tiled_dir), "--images", str(photo_path.parent),
            "--out", str(out), "--max-new-tokens", "3", "--device", "cpu", "--prompt", QUESTION]  # fmt: skip
    assert main(argv) == 0
    [row] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert row["id"] == "photo"
    check_tiled(seen, expected, reference)
    assert_same_prompt(seen, reference)


def test_evaluation(tiled_dir, photo_path, seen, expected, reference, tmp_path):
    """Two questions about the photo: one batch of two prompts, and evaluation's image reliance (a plain
    forward with pixels, own images vs the other sample's) runs on it too."""
    from thinchat.eval import evaluate

    def entry(eid: str, question: str, answer: str) -> dict:
        turns = [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]
        return {"id": eid, "image": photo_path.name, "conversations": turns}

    data = photo_path.parent / "test.json"
    entries = [entry("a", QUESTION, "Quartz about 60%."), entry("b", "Describe the grains.", "Subrounded.")]
    data.write_text(json.dumps(entries), encoding="utf-8")
    report = evaluate(
        {"tiled": str(tiled_dir)}, data, tmp_path / "out", batch_size=2, max_new_tokens=3,
        meteor="nltk", device="cpu", question_probes=0,
    )  # fmt: skip
    assert report["counts"]["scored"] == 2
    assert report["image_reliance"]["tiled"]["n_samples"] == 2
    generate = [(ids, views) for ids, views in seen.forwards if ids.shape[0] == 2]
    reliance = [(ids, views) for ids, views in seen.forwards if ids.shape[0] == 1]
    assert len(generate) == 1 and len(reliance) == 4  # 2 samples x (own, other's) images
    check_tiled(Seen(generate, seen.pixels[:1]), expected, reference, rows=2)
    check_tiled(Seen(reliance, seen.pixels[1:]), expected, reference)
    assert len(seen.pixels) == 1 + 4
