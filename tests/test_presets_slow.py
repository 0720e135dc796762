"""End to end on the real offline presets: build, then load with plain transformers (no thinchat import)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

PLAIN_TRANSFORMERS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    path = sys.argv[1]
    processor = AutoProcessor.from_pretrained(path)
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    image = Image.new("RGB", (160, 120), (190, 170, 140))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What do you see?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print(json.dumps({"answer": answer, "thinchat_imported": "thinchat" in sys.modules,
                      "image_tokens": int((inputs["input_ids"] == model.config.image_token_id).sum())}))
    """
)


@pytest.fixture(scope="module")
def default_base(tmp_path_factory):
    from thinchat.model.compose import build

    out = tmp_path_factory.mktemp("base")
    info = build("dinov2-small", "smollm2-135m-instruct", out, image_size=112)
    assert info.image_seq_length == 64 and info.chat_template == "chatml"
    return out


def test_default_base_loads_and_generates_with_plain_transformers(default_base):
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS_SCRIPT, str(default_base)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd="/",
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["thinchat_imported"] is False
    assert report["image_tokens"] == 64
    assert report["answer"].strip()


def test_preset_cache_is_reused(default_base):
    from thinchat.model.presets import materialize

    path = materialize("smollm2-135m-instruct")
    before = (path / "model.safetensors").stat().st_mtime_ns
    assert materialize("smollm2-135m-instruct") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == before


def test_gemma3_preset_builds_with_gemma_template(tmp_path):
    from transformers import AutoProcessor

    from thinchat.model.compose import build

    info = build("dinov2-small", "gemma3-270m", tmp_path, image_size=112)
    assert info.chat_template == "gemma" and info.lm_model_type == "gemma3_text"
    processor = AutoProcessor.from_pretrained(tmp_path)
    # Gemma's vocabulary segments Chinese compactly: far fewer tokens than characters x 2.
    assert len(processor.tokenizer("泥质呈纤维状、隐晶状，大部分已绢云母化")["input_ids"]) < 20
