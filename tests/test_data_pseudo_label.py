"""`data pseudo-label` against a local OpenAI-compatible server (FastAPI on 127.0.0.1, loopback only)."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, HTTPException
from PIL import Image

from data_tools.pseudo_label import RateLimiter, make_teacher, pseudo_label
from thinchat.errors import DataFormatError

FAIL_SIZE = (33, 33)  # the fake teacher answers 500 for images of this size


class FakeTeacherServer:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        def chat(body: dict) -> dict:
            content = body["messages"][-1]["content"]
            images = [part["image_url"]["url"] for part in content if part["type"] == "image_url"]
            text = next(part["text"] for part in content if part["type"] == "text")
            sizes = []
            for uri in images:
                assert uri.startswith("data:image/jpeg;base64,")
                sizes.append(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size)
            self.requests.append({"model": body["model"], "sizes": sizes, "text": text})
            if FAIL_SIZE in sizes:
                raise HTTPException(status_code=500, detail="teacher overloaded")
            answer = f"石英约占{40 + len(sizes)}%。\n看到{len(sizes)}张图。"
            return {
                "id": "cmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }

        self.app = app


@pytest.fixture(scope="module")
def teacher() -> Iterator[tuple[str, FakeTeacherServer]]:
    fake = FakeTeacherServer()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake.app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}/v1", fake
    server.should_exit = True
    thread.join(timeout=10)


def _slides(tmp_path: Path) -> Path:
    d = tmp_path / "slides"
    d.mkdir()
    Image.new("RGB", (40, 30), "white").save(d / "a.jpg")
    Image.new("RGB", (20, 20), "blue").save(d / "b_ppl.png")
    Image.new("RGB", (20, 20), "black").save(d / "b_xpl.png")
    Image.new("RGB", FAIL_SIZE, "red").save(d / "c.png")
    Image.new("RGB", (64, 64), "gray").save(d / "full.jpg", quality=90)
    data = (d / "full.jpg").read_bytes()
    (d / "full.jpg").unlink()
    (d / "d.jpg").write_bytes(data[: len(data) // 2])  # truncated
    return d


def test_describe_resumable_with_failures(tmp_path: Path, teacher: tuple[str, FakeTeacherServer]) -> None:
    url, fake = teacher
    fake.requests.clear()
    slides = _slides(tmp_path)
    out = tmp_path / "labels.tsv"
    stats = pseudo_label(url, out, images=slides, rate=0, retries=1, retry_wait=0.01, model="vlm")
    assert stats["jobs"] == 4 and stats["written"] == 2 and stats["failed"] == 2 and stats["resumed"] == 0
    rows = [line.split("\t") for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [["a", "石英约占41%。 看到1张图。"], ["b", "石英约占42%。 看到2张图。"]]
    sent = {tuple(r["sizes"]) for r in fake.requests}
    assert ((40, 30),) in sent and ((20, 20), (20, 20)) in sent
    assert sum(1 for r in fake.requests if r["sizes"] == [FAIL_SIZE]) == 2  # retried once
    assert all(r["model"] == "vlm" and "薄片" in r["text"] for r in fake.requests)
    failures = [json.loads(x) for x in (tmp_path / "labels.tsv.failures.jsonl").read_text().splitlines()]
    by_id = {f["id"]: f["error"] for f in failures}
    assert set(by_id) == {"c", "d"} and "500" in by_id["c"] and "truncated" in by_id["d"]

    before = len(fake.requests)
    again = pseudo_label(url, out, images=slides, rate=0, retries=0, model="vlm")
    assert again["resumed"] == 2 and again["written"] == 0 and again["failed"] == 2
    assert len(fake.requests) == before + 1  # only the failed slide was asked again
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2


def test_translate_and_expand(tmp_path: Path, teacher: tuple[str, FakeTeacherServer]) -> None:
    url, fake = teacher
    fake.requests.clear()
    caps = tmp_path / "en.tsv"
    caps.write_text("0001\tQuartz dominates.\n0002\t已经是中文。\n", encoding="utf-8")
    out = tmp_path / "zh.tsv"
    stats = pseudo_label(url, out, task="translate", captions=caps, lang="zh", rate=0)
    assert stats["written"] == 1 and stats["skipped"] == 1
    assert fake.requests[-1]["sizes"] == [] and "Quartz dominates." in fake.requests[-1]["text"]
    assert "翻译成中文" in fake.requests[-1]["text"]
    prompt = tmp_path / "p.txt"
    prompt.write_text("Expand: {caption}", encoding="utf-8")
    slides = _slides(tmp_path)
    caps.write_text("a\tquartz\n", encoding="utf-8")
    stats = pseudo_label(
        url, tmp_path / "x.tsv", images=slides, task="expand", captions=caps, prompt_file=prompt, rate=0
    )
    assert stats["written"] == 1 and fake.requests[-1]["text"] == "Expand: quartz"
    assert fake.requests[-1]["sizes"] == [(40, 30)]


def test_rate_limit_and_bad_teacher(tmp_path: Path) -> None:
    limiter = RateLimiter(20.0)
    start = time.monotonic()
    for _ in range(5):
        limiter.wait()
    assert time.monotonic() - start >= 0.19
    with pytest.raises(DataFormatError, match="OpenAI-compatible base URL"):
        make_teacher(str(tmp_path / "nope"))
    with pytest.raises(DataFormatError, match="needs --captions"):
        pseudo_label("http://127.0.0.1:9/v1", tmp_path / "o.tsv", task="translate")


def test_local_checkpoint_teacher(tmp_path: Path, tiny_llava_dir: Path) -> None:
    """A checkpoint directory runs through thinchat.engine.ChatEngine (tiny random model: any text)."""
    from data_tools.pseudo_label import EngineTeacher

    teacher = make_teacher(str(tiny_llava_dir))
    assert isinstance(teacher, EngineTeacher)
    teacher.overrides["max_new_tokens"] = 8
    slides = tmp_path / "s"
    slides.mkdir()
    Image.new("RGB", (32, 32), "white").save(slides / "x_ppl.png")
    Image.new("RGB", (32, 32), "black").save(slides / "x_xpl.png")
    stats = pseudo_label(teacher, tmp_path / "o.tsv", images=slides, rate=0, retries=0)
    assert stats["jobs"] == 1 and stats["written"] + stats["failed"] == 1
    lines = (tmp_path / "o.tsv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == stats["written"] and all(line.startswith("x\t") for line in lines)
