"""`thinchat serve` as a real child process on the checkpoint kinds training writes (a LoRA adapter dir as
`scripts/finetune_lora.sh` leaves it, and its `thinchat export --merge` output), plus its CLI errors."""

from __future__ import annotations

import json
import signal

import openai
import pytest
import torch

from thinchat.server import BackgroundServer, ServeProcess
from thinchat.testing import enliven, tiny_image, tiny_llava

QUESTION = "Describe this thin section."


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A base Llava dir and a peft LoRA adapter dir laid out as `thinchat train` writes it."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("serve_ckpts")
    model, processor = tiny_llava("llama", "dinov2", image_size=28)
    enliven(model)  # larger random weights: greedy answers are varied text, not one repeated token
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=r"model\.language_model\..*\.(q_proj|v_proj)",
        modules_to_save=["multi_modal_projector"],
    )
    peft_model = get_peft_model(model, lora)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a "trained" adapter
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    processor.save_pretrained(adapter)
    (adapter / "thinchat_checkpoint.json").write_text(json.dumps({"base_model": "../base", "stage": "lora"}))
    return adapter


def _messages(url: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}],
        }
    ]


def test_serve_lora_checkpoint_then_merged_export_answers_the_same(lora_dir, tmp_path):
    from thinchat.cli import main
    from thinchat.engine import ChatEngine

    tiny_image(0).save(tmp_path / "slide.png")
    args = [
        "--from_pretrained",
        str(lora_dir),
        "--api-key",
        "k",
        "--allow-dir",
        str(tmp_path),
        "--served-model-name",
        "thinchat-tiny",
        "--max-new-tokens",
        "8",
    ]
    with ServeProcess(args) as proc:
        client = openai.OpenAI(base_url=proc.url, api_key="k", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["thinchat-tiny"]
        result = client.chat.completions.create(
            model="thinchat-tiny", messages=_messages(str(tmp_path / "slide.png")), temperature=0
        )
        lora_answer = result.choices[0].message.content
        assert len(set(lora_answer)) > 2
        # --max-new-tokens 8 is the default answer length: same as asking for 8, shorter than 16.
        for max_tokens, same in ((8, True), (16, False)):
            other = client.chat.completions.create(
                model="thinchat-tiny",
                temperature=0,
                max_tokens=max_tokens,
                messages=_messages(str(tmp_path / "slide.png")),
            )
            assert (other.choices[0].message.content == lora_answer) is same
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught; SIGKILL (-9) would mean a hang.
    assert proc.returncode in (0, -signal.SIGTERM)

    merged = tmp_path / "merged"
    assert main(["export", "--from_pretrained", str(lora_dir), "--merge", "--out", str(merged)]) == 0
    engine = ChatEngine.from_pretrained(merged)
    with BackgroundServer(engine) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=60)
        merged_answer = (
            client.chat.completions.create(
                model="merged",
                messages=_messages(_data_uri(tmp_path / "slide.png")),
                temperature=0,
                max_tokens=8,
            )
            .choices[0]
            .message.content
        )
    assert merged_answer == lora_answer


def _data_uri(path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_serve_unknown_checkpoint_is_a_clear_error(tmp_path, capsys):
    from thinchat.cli import main

    missing = tmp_path / "no_such_checkpoint"
    assert main(["serve", "--from_pretrained", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_serve_bad_allow_dir(tmp_path, capsys):
    from thinchat.cli import main

    assert main(["serve", "--from_pretrained", str(tmp_path), "--allow-dir", str(tmp_path / "nope")]) == 2
    assert "--allow-dir" in capsys.readouterr().err


def test_web_demo_unknown_checkpoint_is_a_clear_error(tmp_path, capsys):
    from thinchat.commands.web import main

    missing = tmp_path / "no_such_checkpoint"
    assert main(["--from_pretrained", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
