"""Looking first: one layout (thinchat.chat.look) and one kept description per slide for every interface."""

from __future__ import annotations

import argparse
import base64
import io
import json

import httpx
import pytest
from PIL import Image

from thinchat.chat.look import insert_looks, is_description_question, look_question

IMG = {"type": "image"}


def _user(*parts):
    return {"role": "user", "content": [*parts]}


def _text(text):
    return {"type": "text", "text": text}


def test_insert_looks_moves_the_images_to_a_description_exchange_before_the_question():
    calls = []

    def describe(first, n, question):
        calls.append((first, n, question))
        return f"description {first}"

    messages = [
        {"role": "system", "content": "Be brief."},
        _user(IMG, IMG, _text("Is there calcite?")),
        {"role": "assistant", "content": [_text("No.")]},
        _user(_text("And quartz?")),
        _user(IMG, _text("这里有石英吗？")),
    ]
    out = insert_looks(messages, describe)
    assert calls == [(0, 2, "Describe this thin section."), (2, 1, "描述这张薄片。")]
    assert out == [
        {"role": "system", "content": "Be brief."},
        _user(IMG, IMG, _text("Describe this thin section.")),
        {"role": "assistant", "content": [_text("description 0")]},
        _user(_text("Is there calcite?")),
        {"role": "assistant", "content": [_text("No.")]},
        _user(_text("And quartz?")),
        _user(IMG, _text("描述这张薄片。")),
        {"role": "assistant", "content": [_text("description 2")]},
        _user(_text("这里有石英吗？")),
    ]
    # A looked conversation sent again (a client re-sending its history) is not looked twice.
    assert insert_looks(out, describe) == out and len(calls) == 2


def test_a_description_question_is_not_preceded_by_a_description():
    assert is_description_question("Describe this thin section.") and is_description_question(
        "描述这张薄片。"
    )
    assert not is_description_question("Is there calcite?")
    messages = [_user(IMG, _text("请描述这张岩石薄片的镜下特征。"))]
    assert insert_looks(messages, lambda *a: pytest.fail("looked at a description question")) == messages
    assert look_question("Is there any calcite?") == "Describe this thin section."
    assert look_question("有方解石吗？") == "描述这张薄片。"


@pytest.fixture(scope="module")
def lively_engine(tmp_path_factory):
    """A tiny Llava whose answers depend on the image and the question, and one of its slides."""
    from thinchat.engine import ChatEngine
    from thinchat.generation import GenerationSettings
    from thinchat.testing import enliven, tiny_image, tiny_llava

    model, processor = tiny_llava("llama", "dinov2", image_size=28)
    enliven(model)
    path = tmp_path_factory.mktemp("lively_look")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    tiny_image(1).save(path / "slide1.png")
    engine = ChatEngine.from_pretrained(path, settings=GenerationSettings(max_new_tokens=8))
    return path, engine


def test_the_description_is_generated_once_per_slide_and_kept(lively_engine):
    _, engine = lively_engine
    from thinchat.testing import tiny_image

    image = tiny_image(7)
    question, pieces = engine.look([image], "Is there quartz?")
    first = "".join(pieces).strip()
    assert question == "Describe this thin section." and first
    again_question, again = engine.look([image.copy()], "And calcite?")  # same pixels: kept
    assert (again_question, list(again)) == (question, [first])
    # The same description whether it was streamed, asked in one call or generated in a batch.
    assert engine.description([image], "Any zircon?") == first
    other = tiny_image(8)
    [looked] = engine.looked_batch([[_user(IMG, _text("Is there quartz?"))]], [[other]])
    assert looked[1]["content"][0]["text"] == engine.description([other], "Is there quartz?")


def test_a_served_answer_equals_the_cli_demos_for_the_same_slide_and_question(lively_engine):
    from thinchat.commands.chat import add_arguments, run
    from thinchat.server.runner import BackgroundServer

    path, engine = lively_engine
    question = "Is there any calcite in this slide?"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--from_pretrained",
            str(path),
            "--max-new-tokens",
            "8",
            "--jsonl",
            "--image",
            str(path / "slide1.png"),
        ]
    )
    out, err = io.StringIO(), io.StringIO()
    assert run(args, stdin=io.StringIO(question + "\n"), stdout=out, stderr=err) == 0, err.getvalue()
    cli = json.loads(out.getvalue().splitlines()[0])
    assert cli["description"] and cli["answer"]

    uri = "data:image/png;base64," + base64.b64encode((path / "slide1.png").read_bytes()).decode()
    body = {
        "model": engine.name,
        "max_tokens": 8,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": uri}},
                    {"type": "text", "text": question},
                ],
            }
        ],
    }
    with BackgroundServer(engine) as server:
        looked = httpx.post(f"{server.url}/chat/completions", json=body, timeout=120).json()
        direct = httpx.post(f"{server.url}/chat/completions", json={**body, "look_first": False}, timeout=120)
    assert looked["choices"][0]["message"]["content"].strip() == cli["answer"]
    assert engine.description([Image.open(path / "slide1.png")], question) == cli["description"]
    # Asked without looking, the same question gets another answer (the description changed it).
    assert direct.json()["choices"][0]["message"]["content"].strip() != cli["answer"]


def test_the_report_describes_its_slides_in_full_batches_before_the_questions(
    lively_engine, tmp_path, monkeypatch
):
    """Questions come slide by slide; the report's looking-first pass describes batch_size slides at a
    time first instead of the few new slides of each batch of questions."""
    from thinchat.engine import ChatEngine
    from thinchat.eval import runner
    from thinchat.evalsample import EvalSample
    from thinchat.generation import GenerationSettings
    from thinchat.testing import tiny_image

    path, _ = lively_engine
    for i in range(3):
        tiny_image(20 + i).save(tmp_path / f"s{i}.png")
    samples = [
        EvalSample(f"s{i}-{q}", [tmp_path / f"s{i}.png"], [], f"<image>\n{q}", ["Yes."], "en", [f"s{i}"])
        for i in range(3)
        for q in ("Is there quartz?", "Is there calcite?")
    ]

    def prompts_per_generate_call(batch_size: int = 3) -> list[int]:
        engine = ChatEngine.from_pretrained(path, settings=GenerationSettings(max_new_tokens=8))
        sizes, generate = [], engine.generate_batch
        engine.generate_batch = lambda m, i, *a, **k: sizes.append(len(m)) or generate(m, i, *a, **k)
        answers = runner.generate_for_samples(engine, samples, batch_size, 4, look_first=True)
        assert sorted(answers) == sorted(s.id for s in samples)
        return sizes

    # the 3 descriptions in one batch, then the 6 questions in 2 batches of 3
    assert prompts_per_generate_call() == [3, 3, 3]
    # at most batch_size slides a window (the engine keeps a bounded number of descriptions):
    # s0 and s1 described, their 4 questions; then s2 described, its 2 questions
    assert prompts_per_generate_call(2) == [2, 2, 2, 1, 2]
    monkeypatch.setattr(runner, "describe_slides", lambda *args: None)
    assert prompts_per_generate_call() == [2, 3, 1, 3]  # slides s0, s1, then s2 as their questions come
