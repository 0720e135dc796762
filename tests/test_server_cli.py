"""`thinchat serve` as a real child process: argument handling, loading, serving, clean shutdown."""

from __future__ import annotations

import signal

import openai

from thinchat.server import ServeProcess
from thinchat.testing import tiny_image


def test_serve_command_end_to_end(tiny_llava_dir, tmp_path):
    tiny_image(0).save(tmp_path / "slide.png")
    args = [
        "--from_pretrained",
        str(tiny_llava_dir),
        "--api-key",
        "k",
        "--allow-dir",
        str(tmp_path),
        "--served-model-name",
        "thinchat-tiny",
        "--max-new-tokens",
        "6",
    ]
    with ServeProcess(args) as proc:
        client = openai.OpenAI(base_url=proc.url, api_key="k", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["thinchat-tiny"]
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": str(tmp_path / "slide.png")}},
                    {"type": "text", "text": "Describe this thin section."},
                ],
            }
        ]
        result = client.chat.completions.create(model="thinchat-tiny", messages=messages, temperature=0)
        assert result.usage.completion_tokens <= 6  # --max-new-tokens is the default answer length
        assert result.choices[0].finish_reason in ("stop", "length")
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught; SIGKILL (-9) would mean a hang.
    assert proc.returncode in (0, -signal.SIGTERM)


def test_serve_unknown_checkpoint_is_a_clear_error(tmp_path, capsys):
    from thinchat.cli import main

    missing = tmp_path / "no_such_checkpoint"
    assert main(["serve", "--from_pretrained", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_serve_bad_allow_dir(tmp_path, capsys):
    from thinchat.cli import main

    assert main(["serve", "--from_pretrained", str(tmp_path), "--allow-dir", str(tmp_path / "nope")]) == 2
    assert "--allow-dir" in capsys.readouterr().err
