"""Tiles for large photographs (thinchat.model.tiling): grids, views, message expansion, the engine."""

from __future__ import annotations

import pytest
from PIL import Image

from thinchat.errors import ModelSpecError, PromptTooLongError
from thinchat.model import tiling
from thinchat.model.tiling import expand_tiles, tile_boxes, tile_grid, tile_views
from thinchat.testing import tiny_image, tiny_llava

QUESTION = "Describe this thin section."


def photo(width: int = 2000, height: int = 1500, seed: int = 0) -> Image.Image:
    """A large random-ish photograph (a few colour blocks; cheap to make)."""
    return tiny_image(seed, 8).resize((width, height), Image.NEAREST)


def user(n_images: int, text: str = QUESTION) -> dict:
    return {
        "role": "user",
        "content": [*({"type": "image"} for _ in range(n_images)), {"type": "text", "text": text}],
    }


@pytest.mark.parametrize(
    ("size", "max_tiles", "grid"),
    [
        ((2000, 1500), 4, (2, 2)),  # 4:3 ties 1x1 and 2x2; the photo is large enough for four tiles
        ((3000, 1000), 3, (3, 1)),
        ((1000, 3000), 6, (1, 3)),
        ((2000, 1000), 4, (2, 1)),
        ((2000, 1500), 1, (1, 1)),  # 1: off
        ((2000, 1500), 0, (1, 1)),  # 0: off
        ((84, 84), 4, (1, 1)),  # no larger than the tower's input: no tiles
        ((100, 80), 4, (1, 1)),  # a little larger, but too small for 2x2: the tie goes to 1x1
    ],
)
def test_grid_matches_the_aspect_ratio(size, max_tiles, grid):
    assert tile_grid(*size, max_tiles, tile_size=84) == grid


def test_views_are_the_global_view_then_row_major_crops():
    image = photo(2000, 1500)
    views = tile_views(image, 4, tile_size=84)
    assert len(views) == 5
    assert views[0] is image
    assert tile_boxes(2000, 1500, (2, 2)) == [
        (0, 0, 1000, 750),
        (1000, 0, 2000, 750),
        (0, 750, 1000, 1500),
        (1000, 750, 2000, 1500),
    ]
    assert [v.size for v in views[1:]] == [(1000, 750)] * 4
    assert views[2].tobytes() == image.crop((1000, 0, 2000, 750)).tobytes()
    assert tile_boxes(3000, 1000, (3, 1)) == [
        (0, 0, 1000, 1000),
        (1000, 0, 2000, 1000),
        (2000, 0, 3000, 1000),
    ]
    small = photo(84, 84)
    assert tile_views(small, 4, tile_size=84) == [small]


def test_message_expansion_keeps_order_and_tiles_a_slide_alike():
    ppl, xpl = photo(2000, 1500, 1), photo(1000, 700, 2)  # the slide's grid comes from its first image
    other = photo(3000, 1000, 3)
    messages = [
        {"role": "system", "content": "You are a petrographer."},
        user(2),
        {"role": "assistant", "content": [{"type": "text", "text": "Quartz."}]},
        user(1, "And this one?"),
    ]
    out, views = expand_tiles(messages, [ppl, xpl, other], 4, tile_size=84)
    assert out[0] == messages[0] and out[2] == messages[2]
    assert [p["type"] for p in out[1]["content"]] == ["image"] * 10 + ["text"]
    assert [p["type"] for p in out[3]["content"]] == ["image"] * 4 + ["text"]  # 3000x1000 at cap 4: 3x1
    assert views[0] is ppl and views[5] is xpl and views[10] is other
    assert [v.size for v in views[6:10]] == [(500, 350)] * 4  # xpl cut by ppl's 2x2 grid
    assert [v.size for v in views[11:]] == [(1000, 1000)] * 3
    assert messages[1]["content"][0] == {"type": "image"}  # the input is not modified
    assert len(messages[1]["content"]) == 3


def test_off_leaves_messages_and_images_as_they_are():
    messages, images = [user(1)], [photo()]
    for off in (0, 1):
        out, views = expand_tiles(messages, images, off, tile_size=84)
        assert out == messages and views == images


def test_negative_max_tiles_is_refused_with_the_valid_values(tmp_path):
    from thinchat.model.compose import build

    with pytest.raises(ModelSpecError, match="0 or 1"):
        build("dinov2-small", "smollm2-135m-instruct", tmp_path / "out", max_tiles=-1)
    with pytest.raises(ModelSpecError, match="max_tiles=-2"):
        tiny_llava(max_tiles=-2)


def test_build_command_refuses_negative_max_tiles(tmp_path, capsys):
    from thinchat.cli import main

    assert main(["build", "--out", str(tmp_path / "out"), "--max-tiles", "-1"]) == 2
    assert "use 0 or 1 (off" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ----- the engine ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiled_dir(tmp_path_factory):
    """A saved tiny Llava (28 px, 4 image tokens per view) built with max_tiles=4."""
    model, processor = tiny_llava("llama", "dinov2", image_size=28, max_tiles=4)
    path = tmp_path_factory.mktemp("tiled")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def image_tokens(engine, text: str) -> int:
    ids = engine.prompts.tokenize(text)["input_ids"][0]
    return int((ids == engine.image_token_id).sum())


def test_a_checkpoint_built_with_tiles_keeps_them_when_reloaded(tiled_dir):
    from transformers import LlavaConfig

    from thinchat.model.loading import load_pretrained

    assert LlavaConfig.from_pretrained(tiled_dir).to_dict()[tiling.CONFIG_KEY] == 4
    model, _ = load_pretrained(tiled_dir)
    assert tiling.max_tiles_of(model.config) == 4


def test_engine_shows_a_photograph_as_its_global_view_and_tiles(tiled_dir):
    from thinchat.engine import ChatEngine

    engine = ChatEngine.from_pretrained(tiled_dir, device="cpu")
    assert engine.max_tiles == 4
    seq = engine.image_seq_length
    text = engine.render([user(1)], [photo()])
    assert image_tokens(engine, text) == (1 + 4) * seq
    ids, views = engine.prompts.encode_views([user(2)], [photo(seed=1), photo(seed=2)], 8)
    assert int((ids == engine.image_token_id).sum()) == 2 * (1 + 4) * seq and len(views) == 10
    answer = engine.describe([photo()], QUESTION, max_new_tokens=4)
    assert isinstance(answer, str)
    assert engine.generate_batch([[user(1)], [user(1)]], [[photo()], [photo(84, 84)]], 3)
    assert image_tokens(engine, engine.render([user(1)], [photo(20, 20)])) == seq  # small: no tiles


def test_images_and_tiles_smaller_than_a_patch_are_resized_to_the_towers_input(tiled_dir):
    """A 1 x 1 px image, or a thin strip whose tiles are narrower than the tower's 14 px patch, is neither
    refused nor crashes: the processor scales every view up to the tower's input (28 px here)."""
    from thinchat.engine import ChatEngine

    engine = ChatEngine.from_pretrained(tiled_dir, device="cpu")
    seq = engine.image_seq_length
    for image, n_views in ((photo(1, 1), 1), (photo(5, 3), 1), (photo(3, 200), 5)):
        _, views = engine.prompts.encode_views([user(1)], [image], 8)
        assert len(views) == n_views, image.size
        assert min(min(v.size) for v in views) < 14  # smaller than a patch
        pixels = engine.processor.image_processor(images=views, return_tensors="pt")["pixel_values"]
        assert tuple(pixels.shape) == (n_views, 3, 28, 28)
        assert image_tokens(engine, engine.render([user(1)], [image])) == n_views * seq
        assert isinstance(engine.describe([image], QUESTION, max_new_tokens=2), str)


def test_prompt_too_long_says_tiles_are_why(tiled_dir):
    from thinchat.engine import ChatEngine

    engine = ChatEngine.from_pretrained(tiled_dir, device="cpu")
    engine.prompts.context_limit = 60
    with pytest.raises(PromptTooLongError, match="tiles .*max_tiles=4"):
        engine.prompts.encode([user(3)], [photo(seed=i) for i in range(3)], 8)


def test_off_by_default_prompts_are_unchanged():
    from thinchat.engine import ChatEngine

    plain_model, processor = tiny_llava("llama", "dinov2", image_size=28)
    one_model, _ = tiny_llava("llama", "dinov2", image_size=28, max_tiles=1)
    assert tiling.CONFIG_KEY not in plain_model.config.to_dict()
    assert one_model.config.to_dict() == plain_model.config.to_dict()
    engine = ChatEngine(plain_model, processor)
    assert engine.max_tiles == 0
    big, small = engine.render([user(1)], [photo()]), engine.render([user(1)], [photo(28, 28)])
    assert big == small
    assert image_tokens(engine, big) == engine.image_seq_length
    _, views = engine.prompts.encode_views([user(1)], [photo()], 8)
    assert len(views) == 1


def test_server_limits_count_the_users_images_before_tiles(tiled_dir):
    import base64
    import io

    import openai

    from thinchat.engine import ChatEngine
    from thinchat.server import BackgroundServer, ServerSettings

    def part(image: Image.Image) -> dict:
        buf = io.BytesIO()
        image.save(buf, "PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        return {"type": "image_url", "image_url": {"url": url}}

    engine = ChatEngine.from_pretrained(tiled_dir, device="cpu")
    settings = ServerSettings(api_key="k", max_images=1, look_first=False)
    with BackgroundServer(engine, settings) as server:
        client = openai.OpenAI(base_url=server.url, api_key="k", max_retries=0, timeout=60)
        content = [part(photo(400, 300)), {"type": "text", "text": QUESTION}]
        result = client.chat.completions.create(
            model=engine.name, messages=[{"role": "user", "content": content}], max_tokens=3, temperature=0
        )
        tiled_count = engine.count_tokens([user(1)], [photo(400, 300)])
        assert result.usage.prompt_tokens == tiled_count
        rendered = engine.render([user(1)], [photo(400, 300)])
        assert image_tokens(engine, rendered) == (1 + 4) * engine.image_seq_length  # 2x2 tiles
        with pytest.raises(openai.BadRequestError, match="too many images"):
            client.chat.completions.create(
                model=engine.name,
                messages=[{"role": "user", "content": [content[0], *content]}],
                max_tokens=3,
            )
