"""The gradio Blocks layout of the web demo and its launcher (``python web_demo.py`` / ``thinchat web``).

Why Blocks rather than ``ChatInterface``: the demo needs two image inputs (PPL and XPL views of one
field), a regenerate button, bundled example slides and a live interface-language switch, which is
more than ``ChatInterface`` lays out. Behaviour lives in :mod:`thinchat.web.chat`.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from thinchat.images import DEFAULT_MAX_PIXELS
from thinchat.web.chat import WebChat
from thinchat.web.components import SlideImage
from thinchat.web.strings import DEFAULT_LANG, languages, strings

log = logging.getLogger(__name__)

#: Example slides bundled with the repository (``examples/make_examples.py`` regenerates them).
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"

#: Largest upload gradio accepts (413 above it, nothing stored); ``--max-upload-mb`` changes it.
DEFAULT_MAX_UPLOAD_MB = 25


CSS = """
#thinchat-title h1 { margin-bottom: 0.2em; }
#thinchat-info { opacity: 0.7; font-size: 0.9em; }
#chatbot { min-height: 420px; }
"""


def example_rows(lang: str, examples_dir: Path = EXAMPLES_DIR) -> list[list[str]]:
    """``[[ppl, xpl, question], ...]`` for the bundled slides; empty when the directory is absent."""
    index = examples_dir / "examples.json"
    if not index.is_file():
        log.warning(
            "no example slides at %s (examples/ ships with the repository, not the wheel)", examples_dir
        )
        return []
    entries = json.loads(index.read_text(encoding="utf-8"))
    question = strings(lang)["example_question"]
    return [[str(examples_dir / e["ppl"]), str(examples_dir / e["xpl"]), question] for e in entries.values()]


@dataclass
class _Page:
    """The components of the demo page that its events read, write or relabel."""

    state: gr.State
    title: gr.Markdown
    ppl: gr.Image
    xpl: gr.Image
    settings_box: gr.Accordion
    temperature: gr.Slider
    top_p: gr.Slider
    max_tokens: gr.Slider
    language: gr.Radio
    info: gr.Markdown
    chatbot: gr.Chatbot
    textbox: gr.Textbox
    send: gr.Button
    regenerate: gr.Button
    clear: gr.Button

    @property
    def sliders(self) -> list[gr.Slider]:
        """The generation settings, in the order the handlers take them."""
        return [self.temperature, self.top_p, self.max_tokens]


def _header(s: dict[str, str]) -> str:
    """The page title and subtitle, as Markdown."""
    return f"# {s['title']}\n{s['subtitle']}"


def _model_info(engine: Any, s: dict[str, str]) -> str:
    """The line naming the model and its context length."""
    return s["model_info"].format(name=engine.name, context=engine.context_limit)


def _view_input(label: str, elem_id: str) -> gr.Image:
    return SlideImage(
        type="filepath", label=label, sources=["upload", "clipboard"], height=200, elem_id=elem_id
    )


def _image_inputs(s: dict[str, str]) -> tuple[gr.Image, gr.Image]:
    """The PPL and XPL views of one field, side by side."""
    with gr.Row():
        return _view_input(s["ppl"], "ppl-image"), _view_input(s["xpl"], "xpl-image")


def _settings_panel(engine: Any, s: dict[str, str]) -> tuple[gr.Accordion, gr.Slider, gr.Slider, gr.Slider]:
    """The sampling sliders, starting at the engine's defaults; the token cap is half the context."""
    defaults = engine.settings
    max_cap = max(16, min(2048, engine.context_limit // 2))
    with gr.Accordion(s["settings"], open=True) as settings_box:
        temperature = gr.Slider(
            0.0,
            1.5,
            value=defaults.temperature,
            step=0.05,
            label=s["temperature"],
            elem_id="temperature",
        )
        top_p = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label=s["top_p"], elem_id="top-p")
        max_tokens = gr.Slider(
            16,
            max_cap,
            value=min(defaults.max_new_tokens, max_cap),
            step=16,
            label=s["max_tokens"],
            elem_id="max-tokens",
        )
    return settings_box, temperature, top_p, max_tokens


def _chat_panel(s: dict[str, str]) -> tuple[gr.Chatbot, gr.Textbox, gr.Button, gr.Button, gr.Button]:
    """The conversation, the question box and its buttons."""
    chatbot = gr.Chatbot(
        label=s["chatbot"],
        elem_id="chatbot",
        height=480,
        placeholder=s["placeholder"],
        buttons=["copy"],
    )
    with gr.Row():
        textbox = gr.Textbox(
            label=s["input"],
            show_label=False,
            placeholder=s["placeholder"],
            lines=1,
            max_lines=6,
            scale=5,
            elem_id="question",
            autofocus=True,
        )
        send = gr.Button(s["send"], variant="primary", scale=1, min_width=80, elem_id="send")
    with gr.Row():
        regenerate = gr.Button(s["regenerate"], size="sm", elem_id="regenerate")
        clear = gr.Button(s["clear"], size="sm", elem_id="clear")
    return chatbot, textbox, send, regenerate, clear


def _build_page(engine: Any, s: dict[str, str], lang: str) -> _Page:
    """Lay out the page inside an open ``gr.Blocks``: inputs and settings on the left, the chat on the right.

    Why one function creates every component: their creation order is their order on the page.
    """
    state = gr.State(None)
    title = gr.Markdown(_header(s), elem_id="thinchat-title")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=260):
            ppl, xpl = _image_inputs(s)
            settings_box, temperature, top_p, max_tokens = _settings_panel(engine, s)
            language = gr.Radio(
                [(strings(code)["lang_name"], code) for code in languages()],
                value=lang,
                label=s["language"],
                elem_id="language",
            )
            info = gr.Markdown(_model_info(engine, s), elem_id="thinchat-info")
        with gr.Column(scale=3, min_width=360):
            chatbot, textbox, send, regenerate, clear = _chat_panel(s)
    return _Page(
        state=state,
        title=title,
        ppl=ppl,
        xpl=xpl,
        settings_box=settings_box,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        language=language,
        info=info,
        chatbot=chatbot,
        textbox=textbox,
        send=send,
        regenerate=regenerate,
        clear=clear,
    )


def _wire_upload_checks(chat: WebChat, page: _Page) -> None:
    """Check each upload as it arrives; an unreadable one is cleared with a toast naming the view.

    Why the raw payload: gradio's own preprocessing would open the file and put its server path in the
    error.
    """
    for view, component in (("ppl", page.ppl), ("xpl", page.xpl)):
        component.upload(
            functools.partial(chat.check_upload, view=view),
            [component, page.language],
            [component],
            preprocess=False,
            concurrency_limit=None,  # a cheap header check: never wait behind a generating request
            show_progress="hidden",
            api_name=f"check_{view}_upload",
            api_visibility="undocumented",
        )


def _wire_chat(chat: WebChat, page: _Page) -> None:
    """Send (button or Enter), regenerate and clear; one generation at a time."""
    ask_inputs = [page.textbox, page.ppl, page.xpl, page.chatbot, page.state, *page.sliders, page.language]
    for trigger in (page.send.click, page.textbox.submit):
        trigger(
            chat.submit,
            ask_inputs,
            [page.chatbot, page.state, page.textbox],
            concurrency_limit=1,
            show_progress="minimal",
        )
    page.regenerate.click(
        chat.regenerate,
        [page.chatbot, page.state, *page.sliders, page.language],
        [page.chatbot, page.state, page.textbox],
        concurrency_limit=1,
        show_progress="minimal",
    )
    page.clear.click(chat.clear, [page.state], [page.chatbot, page.state, page.textbox], queue=False)
    # The chatbot's own trash icon clears the conversation too.
    page.chatbot.clear(chat.clear, [page.state], [page.chatbot, page.state, page.textbox], queue=False)


def _wire_language_switch(engine: Any, page: _Page) -> None:
    """Relabel the page in the language picked, without reloading it or losing the conversation."""

    def relabel(new_lang: str):  # gradio names the event after this function: keep the name
        t = strings(new_lang)
        return (
            _header(t),
            gr.Image(label=t["ppl"]),
            gr.Image(label=t["xpl"]),
            gr.Accordion(label=t["settings"]),
            gr.Slider(label=t["temperature"]),
            gr.Slider(label=t["top_p"]),
            gr.Slider(label=t["max_tokens"]),
            gr.Radio(label=t["language"]),
            _model_info(engine, t),
            gr.Chatbot(label=t["chatbot"], placeholder=t["placeholder"]),
            gr.Textbox(label=t["input"], placeholder=t["placeholder"]),
            gr.Button(t["send"]),
            gr.Button(t["regenerate"]),
            gr.Button(t["clear"]),
        )

    page.language.change(
        relabel,
        [page.language],
        [
            page.title,
            page.ppl,
            page.xpl,
            page.settings_box,
            *page.sliders,
            page.language,
            page.info,
            page.chatbot,
            page.textbox,
            page.send,
            page.regenerate,
            page.clear,
        ],
        queue=False,
    )


def build_demo(
    engine: Any,
    *,
    lang: str = DEFAULT_LANG,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
    examples_dir: Path = EXAMPLES_DIR,
    look_first: bool = True,
) -> gr.Blocks:
    """The Blocks app for ``engine`` with the interface in ``lang`` (switchable in the page);
    ``look_first``: see :class:`~thinchat.chat.session.ChatSession`."""
    s = strings(lang)
    chat = WebChat(engine, max_image_pixels=max_image_pixels, look_first=look_first)
    # No analytics: a lab tool must not phone home (and the test machines have no internet).
    with gr.Blocks(title="thinchat", analytics_enabled=False) as demo:
        page = _build_page(engine, s, lang)
        rows = example_rows(lang, examples_dir)
        if rows:
            gr.Examples(
                rows,
                inputs=[page.ppl, page.xpl, page.textbox],
                label=s["examples"],
                examples_per_page=6,
            )
        _wire_upload_checks(chat, page)
        _wire_chat(chat, page)
        _wire_language_switch(engine, page)
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo


def launch(
    demo: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    examples_dir: Path = EXAMPLES_DIR,
    prevent_thread_lock: bool = False,
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB,
) -> Any:
    """Start the gradio server (blocking unless ``prevent_thread_lock``).

    Uploads over ``max_upload_mb`` are refused by gradio before they are stored. ``show_error`` is off:
    the toasts the handlers raise (``gr.Error``) are still shown, but the text of an unexpected exception,
    which may name server paths, stays in the server log.
    """
    allowed = [str(examples_dir)] if examples_dir.is_dir() else []
    return demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        allowed_paths=allowed,
        prevent_thread_lock=prevent_thread_lock,
        theme=gr.themes.Soft(),
        css=CSS,
        footer_links=["api"],
        show_error=False,
        max_file_size=f"{max_upload_mb}mb",
    )
