"""The OpenAI-compatible server through the official ``openai`` client over loopback (real uvicorn, real
engine on a tiny random checkpoint): answers, streaming, auth, and every bad-input case as a 4xx in
OpenAI's error shape after which the server keeps serving."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.request

import openai
import pytest
from PIL import Image

from thinchat.testing import tiny_image

KEY = "test-key-123"


def data_uri(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def user(*parts) -> list[dict]:
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return [{"role": "user", "content": content}]


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.fixture(scope="module")
def engine(tiny_llava_dir):
    from thinchat.engine import ChatEngine

    return ChatEngine.from_pretrained(tiny_llava_dir)


@pytest.fixture(scope="module")
def allowed(tmp_path_factory):
    root = tmp_path_factory.mktemp("server_files")
    (root / "allowed").mkdir()
    (root / "secret").mkdir()
    tiny_image(1).save(root / "allowed" / "slide.png")
    tiny_image(2).save(root / "secret" / "private.png")
    os.symlink(root / "secret" / "private.png", root / "allowed" / "link.png")
    return root


@pytest.fixture(scope="module")
def server(engine, allowed):
    from thinchat.server import BackgroundServer, ServerSettings

    settings = ServerSettings(
        api_key=KEY,
        allow_dirs=(allowed / "allowed",),
        max_image_pixels=64 * 64,
        max_images=2,
        max_request_bytes=256 * 1024,
    )
    with BackgroundServer(engine, settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=60)


def ask(client, engine, messages, **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=engine.name, messages=messages, **kw)


def stream_text(client, engine, messages, **kw) -> tuple[str, list]:
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    chunks = list(client.chat.completions.create(model=engine.name, messages=messages, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_models_and_health(client, server, engine):
    models = client.models.list()
    assert [m.id for m in models.data] == [engine.name]
    assert client.models.retrieve(engine.name).id == engine.name
    with urllib.request.urlopen(server.url.removesuffix("/v1") + "/health") as resp:
        health = json.load(resp)
    assert health["status"] == "ok" and health["model"] == engine.name


def test_completion_matches_engine_greedy(client, engine):
    image = tiny_image(0)
    messages = user(image_part(data_uri(image)), "Describe this thin section.")
    result = ask(client, engine, messages, max_tokens=10)
    expected = engine.generate_text(
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "Describe this thin section."}],
            }
        ],
        [image],
        max_new_tokens=10,
        temperature=0.0,
    )
    choice = result.choices[0]
    assert result.object == "chat.completion" and result.model == engine.name
    assert choice.message.role == "assistant"
    assert choice.message.content == expected
    assert result.usage.prompt_tokens == engine.count_tokens(
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "Describe this thin section."}],
            }
        ],
        1,
    )
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert choice.finish_reason in ("stop", "length")


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 1234, "top_p": 1.0}])
def test_streaming_equals_non_streaming(client, engine, sampling):
    messages = user(image_part(data_uri(tiny_image(3))), "What accessory minerals are present?")
    full = ask(client, engine, messages, max_tokens=12, **sampling).choices[0].message.content
    text, chunks = stream_text(
        client, engine, messages, max_tokens=12, stream_options={"include_usage": True}, **sampling
    )
    assert text == full
    assert len(full) > 0
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0  # include_usage chunk


def test_seeded_sampling_differs_from_greedy_and_is_reproducible(client, engine):
    messages = user(image_part(data_uri(tiny_image(4))), "Describe this thin section.")
    a = (
        ask(client, engine, messages, max_tokens=12, temperature=1.0, seed=7, top_p=1.0)
        .choices[0]
        .message.content
    )
    b = (
        ask(client, engine, messages, max_tokens=12, temperature=1.0, seed=7, top_p=1.0)
        .choices[0]
        .message.content
    )
    greedy = ask(client, engine, messages, max_tokens=12).choices[0].message.content
    assert a == b and a != greedy


def test_two_images_and_multi_turn(client, engine):
    messages = [
        {"role": "system", "content": "You are a petrographer."},
        {
            "role": "user",
            "content": [
                image_part(data_uri(tiny_image(5))),
                image_part(data_uri(tiny_image(6))),
                {"type": "text", "text": "PPL and XPL: describe."},
            ],
        },
        {"role": "assistant", "content": "Quartz and feldspar."},
        {"role": "user", "content": "Is the calcite ferroan?"},
    ]
    result = ask(client, engine, messages)
    assert result.usage.prompt_tokens > 2 * engine.image_seq_length


def test_stop_string_cuts_the_answer(client, engine):
    messages = user(image_part(data_uri(tiny_image(8))), "Describe this thin section.")
    full = (
        ask(client, engine, messages, max_tokens=16, temperature=1.0, seed=3, top_p=1.0)
        .choices[0]
        .message.content
    )
    stop = full[4:6]
    assert stop and stop.strip()
    cut = ask(client, engine, messages, max_tokens=16, temperature=1.0, seed=3, top_p=1.0, stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_local_file_inside_allowed_dir(client, engine, allowed):
    path = allowed / "allowed" / "slide.png"
    by_path = ask(client, engine, user(image_part(str(path)), "Describe.")).choices[0].message.content
    by_url = ask(client, engine, user(image_part(path.as_uri()), "Describe.")).choices[0].message.content
    by_data = (
        ask(client, engine, user(image_part(data_uri(tiny_image(1))), "Describe.")).choices[0].message.content
    )
    assert by_path == by_url == by_data


def test_auth(server, engine):
    for key in ("wrong-key", ""):
        bad = openai.OpenAI(
            base_url=server.url,
            api_key=key or "x",
            max_retries=0,
            default_headers={} if key else {"Authorization": ""},
        )
        with pytest.raises(openai.AuthenticationError) as err:
            bad.chat.completions.create(model=engine.name, messages=user("hi"), max_tokens=2)
        assert err.value.status_code == 401
        assert err.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def _expect(client, engine, exc_type, status, code, messages, param=None, **kw):
    with pytest.raises(exc_type) as err:
        ask(client, engine, messages, **kw)
    assert err.value.status_code == status
    body = err.value.body
    assert set(body) == {"message", "type", "param", "code"}, body
    assert body["code"] == code, body
    assert body["message"]
    if param is not None:
        assert body["param"] == param
    return body


def test_error_cases_then_still_serving(client, engine, allowed):
    img = "messages[0].content[0].image_url"
    _expect(
        client,
        engine,
        openai.BadRequestError,
        400,
        "invalid_base64",
        user(image_part("data:image/png;base64,@@not base64@@"), "x"),
        param=img,
    )
    not_image = "data:image/png;base64," + base64.b64encode(b"this is a text file, not a PNG").decode()
    body = _expect(
        client, engine, openai.BadRequestError, 400, "invalid_image", user(image_part(not_image), "x")
    )
    assert "not a readable image" in body["message"]
    big = data_uri(Image.new("RGB", (100, 100)))  # 10,000 px > 64x64 limit
    body = _expect(client, engine, openai.APIStatusError, 413, "image_too_large", user(image_part(big), "x"))
    assert "exceeds the limit" in body["message"]
    _expect(
        client,
        engine,
        openai.PermissionDeniedError,
        403,
        "path_not_allowed",
        user(image_part(str(allowed / "secret" / "private.png")), "x"),
    )
    _expect(
        client,
        engine,
        openai.PermissionDeniedError,
        403,
        "path_not_allowed",
        user(image_part(str(allowed / "allowed" / ".." / "secret" / "private.png")), "x"),
    )
    _expect(
        client,
        engine,
        openai.PermissionDeniedError,
        403,
        "path_not_allowed",
        user(image_part(str(allowed / "allowed" / "link.png")), "x"),
    )  # symlink pointing outside
    _expect(
        client,
        engine,
        openai.PermissionDeniedError,
        403,
        "path_not_allowed",
        user(image_part("/etc/passwd"), "x"),
    )
    _expect(
        client,
        engine,
        openai.BadRequestError,
        400,
        "image_not_found",
        user(image_part(str(allowed / "allowed" / "missing.png")), "x"),
    )
    _expect(
        client,
        engine,
        openai.BadRequestError,
        400,
        "remote_url_refused",
        user(image_part("http://127.0.0.1:9/slide.png"), "x"),
    )
    _expect(client, engine, openai.BadRequestError, 400, "empty_message", user("   "))
    _expect(client, engine, openai.BadRequestError, 400, "empty_messages", [])
    _expect(
        client,
        engine,
        openai.BadRequestError,
        400,
        "too_many_images",
        user(*[image_part(data_uri(tiny_image(i))) for i in range(3)], "x"),
    )
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=user("hi"), max_tokens=2)
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"
    long_text = "quartz feldspar calcite " * 400
    _expect(client, engine, openai.BadRequestError, 400, "context_length_exceeded", user(long_text))
    _expect(
        client,
        engine,
        openai.BadRequestError,
        400,
        "invalid_value",
        user("hi"),
        param="temperature",
        temperature=3.5,
    )
    huge = "data:image/png;base64," + "A" * (300 * 1024)
    _expect(client, engine, openai.APIStatusError, 413, "request_too_large", user(image_part(huge), "x"))
    # The same failures in streaming mode are refused before any event is sent.
    with pytest.raises(openai.BadRequestError) as err:
        list(client.chat.completions.create(model=engine.name, messages=user(long_text), stream=True))
    assert err.value.body["code"] == "context_length_exceeded"
    # And the server still answers.
    assert (
        ask(client, engine, user(image_part(data_uri(tiny_image(0))), "Describe.")).choices[0].message.content
    )


def test_invalid_json_and_unknown_route(server):
    base = server.url.removesuffix("/v1")
    for url, data in ((base + "/v1/chat/completions", b"{not json"), (base + "/v1/nothing", b"{}")):
        req = urllib.request.Request(
            url, data=data, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req)
        body = json.load(err.value)
        assert err.value.code in (400, 404) and set(body["error"]) == {"message", "type", "param", "code"}
