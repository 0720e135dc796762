"""Web demo handlers on a real engine (tiny random checkpoint), without a browser: streaming into the
chat history, slide switching, regenerate, clear, bad input as toasts; UI strings and bundled examples."""

from __future__ import annotations

import copy
import itertools

import gradio as gr
import pytest
from PIL import Image

from thinchat.generation import GenerationSettings
from thinchat.testing import tiny_image
from thinchat.web.app import EXAMPLES_DIR, build_demo, example_rows
from thinchat.web.chat import WebChat
from thinchat.web.strings import all_strings, strings

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 16}


@pytest.fixture(scope="module")
def engine(tiny_llava_dir):
    from thinchat.engine import ChatEngine

    # Seeded sampling: the random tiny model's greedy answer is one repeated token, and an unseeded
    # sample can arrive in as few as two pieces; seed 1 gives a fixed answer streamed in several pieces.
    return ChatEngine.from_pretrained(tiny_llava_dir, settings=GenerationSettings(seed=1))


@pytest.fixture
def views(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"view{i}.png"
        tiny_image(i).save(path)
        paths.append(str(path))
    return paths


def submit(chat, text, ppl, xpl, history, state, lang="en"):
    # Copy each update as it comes, as gradio serialises it: later updates must not rewrite earlier ones.
    return [copy.deepcopy(o) for o in chat.submit(text, ppl, xpl, history, state, *SAMPLING.values(), lang)]


def test_strings_complete_in_every_language():
    table = all_strings()
    assert set(table) == {"zh", "en"}
    assert set(table["zh"]) == set(table["en"])
    assert all(isinstance(v, str) and v.strip() for lang in table.values() for v in lang.values())
    assert strings("zh")["send"] == "发送"


def test_submit_streams_and_switches_slides(engine, views):
    chat = WebChat(engine)
    outputs = submit(chat, "Describe this thin section.", views[0], None, [], None)
    history, state, textbox = outputs[-1]
    assert len(outputs) > 2  # several partial updates before the final one
    partial = [o[0][-1]["content"] for o in outputs[:-1]]
    assert all(len(a) <= len(b) for a, b in itertools.pairwise(partial))
    assert len(set(partial)) > 2  # the answer grew piece by piece
    assert textbox == ""
    assert history[0] == {"role": "user", "content": "[new slide: PPL]\nDescribe this thin section."}
    session = chat._sessions[state["id"]]
    assert history[1]["content"].strip() == session.turns[0].answer
    assert len(session.turns[0].images) == 1

    # Same views again: no new slide, the question refers to the current one.
    history, state, _ = submit(chat, "What accessory minerals?", views[0], None, history, state)[-1]
    assert history[2]["content"] == "What accessory minerals?"
    assert session.turns[1].images == []
    # Both views of a new field: switched, PPL first.
    history, state, _ = submit(chat, "Now both views.", views[1], views[2], history, state)[-1]
    assert history[4]["content"].startswith("[new slide: PPL + XPL]")
    assert len(session.turns[2].images) == 2
    assert session.turns[2].images[0].tobytes() == tiny_image(1).convert("RGB").tobytes()


def test_look_first_shows_the_description_before_the_first_answer(engine, views):
    chat = WebChat(engine, look_first=True)
    outputs = submit(chat, "这里有方解石吗？", views[0], None, [], None, lang="zh")
    history, state, _ = outputs[-1]
    session = chat._sessions[state["id"]]
    # The new slide's label goes with the description question, in the question's language.
    assert [m["content"] for m in history[0::2]] == ["[新薄片：PPL]\n描述这张薄片。", "这里有方解石吗？"]
    assert [m["content"].strip() for m in history[1::2]] == [t.answer for t in session.turns]
    assert len(session.turns) == 2 and len(session.turns[0].images) == 1 and session.turns[1].images == []
    # The description streamed into its own message before the answer's message appeared.
    assert any(len(o[0]) == 2 and o[0][1]["content"] for o in outputs)
    # A second question about the same slide is asked as it is.
    history, state, _ = submit(chat, "And quartz?", views[0], None, history, state)[-1]
    assert len(history) == 6 and history[4]["content"] == "And quartz?" and len(session.turns) == 3
    # Regenerate redoes the last answer only.
    again = list(chat.regenerate(history, state, *SAMPLING.values(), "en"))[-1][0]
    assert len(again) == 6 and len(session.turns) == 3


def test_regenerate_and_clear(engine, views):
    chat = WebChat(engine)
    history, state, _ = submit(chat, "Describe this thin section.", views[0], None, [], None)[-1]
    session = chat._sessions[state["id"]]
    outputs = list(chat.regenerate(history, state, *SAMPLING.values(), "en"))
    new_history = outputs[-1][0]
    assert len(new_history) == 2 and len(session.turns) == 1
    assert new_history[1]["content"].strip() == session.turns[0].answer
    cleared, state, _ = chat.clear(state)
    assert cleared == [] and session.turns == [] and state["shown"] is None
    # After clearing, the uploaded view is sent again with the next question.
    history, state, _ = submit(chat, "Again.", views[0], None, cleared, state)[-1]
    assert history[0]["content"].startswith("[new slide: PPL]")


def test_bad_input_is_a_toast_and_the_chat_goes_on(engine, views, tmp_path):
    chat = WebChat(engine)
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    with pytest.raises(gr.Error) as err:
        submit(chat, "Describe.", str(not_image), None, [], None)
    assert "not a readable image" in err.value.message and "PPL" in err.value.message
    big = WebChat(engine, max_image_pixels=16)
    with pytest.raises(gr.Error) as err:
        submit(big, "Describe.", views[0], None, [], None)
    assert "exceeds the limit" in err.value.message
    # Empty question: warning, nothing changes, the typed text is kept.
    with pytest.warns(UserWarning, match="Type a question first"):
        outputs = submit(chat, "   ", views[0], None, [], None)
    assert outputs[-1][0] == [] and outputs[-1][2] == "   "
    # Too long for the tiny model's 512 positions: an error toast in the interface language.
    with pytest.raises(gr.Error) as err:
        submit(chat, "石英 长石 方解石 " * 300, views[0], None, [], None, lang="zh")
    assert err.value.message.startswith("无法回答")
    with pytest.warns(UserWarning, match="Nothing to regenerate"):  # gr.Warning outside a request
        outputs = list(chat.regenerate([], None, *SAMPLING.values(), "en"))
    assert outputs[-1][0] == []
    # And the next good question works.
    history, _, _ = submit(chat, "Describe this thin section.", views[0], None, [], None)[-1]
    assert len(history) == 2


def test_bundled_examples_and_layout(engine):
    rows = example_rows("en")
    assert len(rows) == 3
    for ppl, xpl, question in rows:
        for path in (ppl, xpl):
            assert path.startswith(str(EXAMPLES_DIR))
            size = (EXAMPLES_DIR / path.rsplit("/", 1)[1]).stat().st_size
            assert 0 < size < 60_000
        assert question == "Describe this thin section."
    demo = build_demo(engine, lang="zh")
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {
        "ppl-image",
        "xpl-image",
        "chatbot",
        "question",
        "send",
        "regenerate",
        "clear",
        "temperature",
        "top-p",
        "max-tokens",
        "language",
    } <= ids


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_an_unreadable_view_sent_with_a_question_is_a_toast_in_the_pages_language(tmp_path, lang) -> None:
    """gradio opens an upload before any handler runs: the view input turns that failure into a toast
    (gr.Error) naming the view, in the language its label is in, and never the file's server path."""
    from gradio.data_classes import FileData

    from thinchat.web.components import SlideImage
    from thinchat.web.strings import strings

    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"plain text pretending to be a PNG")
    s = strings(lang)
    view = SlideImage(type="filepath", label=s["xpl"])
    assert view.get_block_name() == "image"  # gradio's own front-end component
    with pytest.raises(gr.Error) as caught:
        view.preprocess(FileData(path=str(bad), orig_name=bad.name))
    assert caught.value.message == s["bad_image"].format(view=s["xpl"], error=s["unreadable"])
    assert str(tmp_path) not in caught.value.message
    good = tmp_path / "ok.png"
    Image.new("RGB", (8, 8)).save(good)
    assert view.preprocess(FileData(path=str(good), orig_name=good.name)) == str(good)
