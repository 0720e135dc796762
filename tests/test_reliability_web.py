"""Web demo abuse cases of issue 16: uploads over the size cap are refused before they are stored, and no
message shown to a visitor names a path on the server (loopback only)."""

from __future__ import annotations

import socket
from pathlib import Path

import gradio as gr
import httpx
import pytest
from PIL import Image

from thinchat.generation import GenerationSettings
from thinchat.web.app import build_demo, launch
from thinchat.web.chat import WebChat


class _Engine:
    """Enough of ChatEngine for the layout; the handlers under test never generate."""

    name = "stand-in"
    settings = GenerationSettings(max_new_tokens=16)
    context_limit = 512


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_uploads_over_the_cap_are_refused(tmp_path: Path) -> None:
    demo = build_demo(_Engine(), lang="en", examples_dir=tmp_path)
    port = _free_port()
    launch(
        demo, host="127.0.0.1", port=port, prevent_thread_lock=True, max_upload_mb=1, examples_dir=tmp_path
    )
    try:
        url = f"http://127.0.0.1:{port}/gradio_api/upload"
        big = httpx.post(url, files={"files": ("big.bin", b"\0" * (2 * 1024 * 1024))}, timeout=30)
        assert big.status_code == 413
        small = httpx.post(url, files={"files": ("small.png", b"\0" * 1024)}, timeout=30)
        assert small.status_code == 200
    finally:
        demo.close()


def test_unreadable_uploads_never_show_the_server_path(tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    demo = build_demo(_Engine(), lang="en", examples_dir=tmp_path)
    port = _free_port()
    launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, examples_dir=tmp_path)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(Exception) as err:  # gradio_client's AppError carries what the page would show
            client.predict(
                "Describe.", handle_file(str(bad)), None, [], None, 0.0, 0.9, 16, "en", api_name="/submit"
            )
        assert "/tmp" not in str(err.value) and str(tmp_path) not in str(err.value), str(err.value)
        assert demo.show_error is False
        # The check that runs on upload gets gradio's raw payload and clears the bad view.
        assert client.predict(handle_file(str(bad)), "en", api_name="/check_ppl_upload") is None
        good = tmp_path / "good.png"
        Image.new("RGB", (32, 32)).save(good)
        kept = client.predict(handle_file(str(good)), "en", api_name="/check_ppl_upload")
        assert kept is not None
    finally:
        demo.close()


def test_upload_check_clears_a_bad_view_with_a_toast_naming_the_view(tmp_path: Path) -> None:
    upload = tmp_path / "gradio-cache" / "0123abcd" / "notes.png"
    upload.parent.mkdir(parents=True)
    upload.write_text("this is not an image")
    chat = WebChat(_Engine(), max_image_pixels=64 * 64)
    with pytest.warns(UserWarning) as warned:  # gr.Warning outside a request
        assert chat.check_upload({"path": str(upload)}, "en", view="ppl") is None
    message = str(warned[0].message)
    assert "PPL" in message and "not a readable image" in message and str(tmp_path) not in message
    big = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(big)
    with pytest.warns(UserWarning, match="exceeds the limit"):
        assert chat.check_upload({"path": str(big)}, "en", view="xpl") is None
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32)).save(good)
    assert chat.check_upload({"path": str(good)}, "zh", view="ppl") is not None  # gr.skip(): kept
    with pytest.raises(gr.Error) as err:
        chat._load_views(str(upload), None, "en")
    assert str(tmp_path) not in err.value.message and "PPL" in err.value.message
