"""The terminal chat (cli_demo.py / thinchat chat) driven through piped stdin, as a script would."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thinchat.chat.repl import escape
from thinchat.commands.chat import add_arguments, run
from thinchat.testing import enliven, tiny_image, tiny_llava

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lively_dir(tmp_path_factory):
    """A saved tiny Llava whose answers depend on image and question (see tests/test_engine.py)."""
    model, processor = tiny_llava("llama", "dinov2", image_size=28)
    enliven(model)
    path = tmp_path_factory.mktemp("lively")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    for seed in (1, 2, 3):
        tiny_image(seed).save(path / f"slide{seed}.png")
    (path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return path


def chat(directory: Path, lines: list[str], *extra: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--from_pretrained", str(directory), "--max-new-tokens", "8", *extra])
    out, err = io.StringIO(), io.StringIO()
    code = run(args, stdin=io.StringIO("".join(f"{line}\n" for line in lines)), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_piped_subprocess_prints_one_line_per_question(lively_dir, tmp_path):
    transcript = tmp_path / "chat.json"
    questions = [
        "Describe this thin section.",
        "",
        "/image slide2.png slide3.png",
        "What accessory minerals are present?",
        "/image missing.png",
        "/frobnicate",
        "Is the calcite ferroan?",
        f"/save {transcript}",
        "/quit",
        "never asked",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "cli_demo.py"),
            "--from_pretrained",
            str(lively_dir),
            "--image",
            "slide1.png",
            "--max-new-tokens",
            "8",
            "--no-look-first",
        ],
        input="\n".join(questions) + "\n",
        capture_output=True,
        text=True,
        cwd=lively_dir,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    answers = proc.stdout.split("\n")[:-1]  # exactly "\n"-separated, whatever characters answers contain
    assert len(answers) == 3  # three questions; commands, the empty line and errors print nothing on stdout
    assert "missing.png: file not found" in proc.stderr
    assert "unknown command /frobnicate" in proc.stderr
    assert "empty line" in proc.stderr
    record = json.loads(transcript.read_text(encoding="utf-8"))
    humans = [c["value"] for c in record["conversations"] if c["from"] == "human"]
    assert humans == [
        "<image>\nDescribe this thin section.",
        "<image>\n<image>\nWhat accessory minerals are present?",
        "Is the calcite ferroan?",
    ]
    assert [Path(p).name for p in record["image"]] == ["slide1.png", "slide2.png", "slide3.png"]
    gpt = [c["value"] for c in record["conversations"] if c["from"] == "gpt"]
    assert answers == [escape(a) for a in gpt]


def test_look_first_describes_each_new_slide_before_its_first_question(lively_dir, tmp_path):
    transcript = tmp_path / "chat.json"
    code, out, err = chat(
        lively_dir,
        [
            "Is there calcite here?",
            "And quartz?",
            f"/image {lively_dir / 'slide2.png'}",
            "这里有方解石吗？",
            f"/save {transcript}",
        ],
        "--jsonl",
        "--image",
        str(lively_dir / "slide1.png"),
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.split("\n")[:-1]]
    assert [r["question"] for r in rows] == ["Is there calcite here?", "And quartz?", "这里有方解石吗？"]
    # A new slide is described first (kept out of the answer), a second question on it is not.
    assert "description" in rows[0] and "description" not in rows[1] and "description" in rows[2]
    record = json.loads(transcript.read_text(encoding="utf-8"))
    humans = [c["value"] for c in record["conversations"] if c["from"] == "human"]
    assert humans == [
        "<image>\nDescribe this thin section.",
        "Is there calcite here?",
        "And quartz?",
        "<image>\n描述这张薄片。",  # the look question in the question's language
        "这里有方解石吗？",
    ]
    gpt = [c["value"] for c in record["conversations"] if c["from"] == "gpt"]
    assert gpt[0] == rows[0]["description"] and gpt[1] == rows[0]["answer"]
    assert gpt[3] == rows[2]["description"] and gpt[4] == rows[2]["answer"]
    # The answer after the description differs from the same question asked with no description.
    _, plain, _ = chat(
        lively_dir,
        ["Is there calcite here?"],
        "--jsonl",
        "--no-look-first",
        "--image",
        str(lively_dir / "slide1.png"),
    )
    assert "description" not in json.loads(plain)
    assert json.loads(plain)["answer"] != rows[0]["answer"]


def test_jsonl_and_errors_keep_lines_aligned(lively_dir):
    code, out, err = chat(
        lively_dir,
        [
            "Describe this thin section.",
            "quartz " * 600,
            "Is <image> here?",
            f"/image {lively_dir / 'broken.png'}",
            "What next?",
        ],
        "--jsonl",
    )
    rows = [json.loads(line) for line in out.split("\n")[:-1]]
    assert [r["question"] for r in rows] == [
        "Describe this thin section.",
        ("quartz " * 600).strip(),
        "Is <image> here?",
        "What next?",
    ]
    assert "answer" in rows[0] and "answer" in rows[3]
    assert "prompt tokens" in rows[1]["error"] and "control token" in rows[2]["error"]
    assert "broken.png: not a readable image" in err and "slide is unchanged" in err
    assert code == 1  # a script can tell that some questions failed


def test_answers_follow_the_slide_and_reset(lively_dir):
    _, first, _ = chat(lively_dir, [f"/image {lively_dir / 'slide1.png'}", "Describe this thin section."])
    _, second, _ = chat(lively_dir, [f"/image {lively_dir / 'slide2.png'}", "Describe this thin section."])
    _, after_reset, err = chat(
        lively_dir,
        [
            f"/image {lively_dir / 'slide2.png'}",
            "Hello there.",
            "/reset",
            f"/image {lively_dir / 'slide1.png'}",
            "Describe this thin section.",
        ],
    )
    assert first != second  # a different slide, a different answer
    assert after_reset.split("\n")[1] == first.strip()  # /reset really forgets the earlier turn
    assert "conversation cleared" in err


def test_bad_checkpoint_and_bad_start_image_exit_2(tmp_path, lively_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "thinchat", "chat", "--from_pretrained", str(tmp_path / "nope")],
        input="hi\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("thinchat chat: error:")
    assert "checkpoint directory not found" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(Exception, match="file not found"):
        chat(lively_dir, ["hi"], "--image", str(tmp_path / "none.png"))


def test_thinchat_chat_subcommand_takes_the_same_options(lively_dir, monkeypatch, capsys):
    from thinchat.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("Describe this thin section.\n/reset\nHello.\n"))
    code = main(
        [
            "chat",
            "--from_pretrained",
            str(lively_dir),
            "--image",
            str(lively_dir / "slide1.png"),
            "--max-new-tokens",
            "6",
            "--temperature",
            "0",
            "--jsonl",
        ]
    )
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.split("\n")[:-1]]
    assert code == 0 and [r["question"] for r in rows] == ["Describe this thin section.", "Hello."]
    assert all(isinstance(r["answer"], str) for r in rows) and "conversation cleared" in err
