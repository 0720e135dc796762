"""The gradio Blocks layout of the web demo and its launcher (``python web_demo.py`` / ``thinchat web``).

Why Blocks rather than ``ChatInterface``: the demo needs two image inputs (PPL and XPL views of one
field), a regenerate button, bundled example slides and a live interface-language switch, which is
more than ``ChatInterface`` lays out. Behaviour lives in :mod:`thinchat.web.chat`.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from thinchat.images import DEFAULT_MAX_PIXELS
from thinchat.web.chat import WebChat
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
    defaults = engine.settings
    max_cap = max(16, min(2048, engine.context_limit // 2))

    def header(s: dict[str, str]) -> str:
        return f"# {s['title']}\n{s['subtitle']}"

    # No analytics: a lab tool must not phone home (and the test machines have no internet).
    with gr.Blocks(title="thinchat", analytics_enabled=False) as demo:
        state = gr.State(None)
        title = gr.Markdown(header(s), elem_id="thinchat-title")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=260):
                with gr.Row():
                    ppl = gr.Image(
                        type="filepath",
                        label=s["ppl"],
                        sources=["upload", "clipboard"],
                        height=200,
                        elem_id="ppl-image",
                    )
                    xpl = gr.Image(
                        type="filepath",
                        label=s["xpl"],
                        sources=["upload", "clipboard"],
                        height=200,
                        elem_id="xpl-image",
                    )
                with gr.Accordion(s["settings"], open=True) as settings_box:
                    temperature = gr.Slider(
                        0.0,
                        1.5,
                        value=defaults.temperature,
                        step=0.05,
                        label=s["temperature"],
                        elem_id="temperature",
                    )
                    top_p = gr.Slider(
                        0.05, 1.0, value=defaults.top_p, step=0.05, label=s["top_p"], elem_id="top-p"
                    )
                    max_tokens = gr.Slider(
                        16,
                        max_cap,
                        value=min(defaults.max_new_tokens, max_cap),
                        step=16,
                        label=s["max_tokens"],
                        elem_id="max-tokens",
                    )
                language = gr.Radio(
                    [(strings(code)["lang_name"], code) for code in languages()],
                    value=lang,
                    label=s["language"],
                    elem_id="language",
                )
                info = gr.Markdown(
                    s["model_info"].format(name=engine.name, context=engine.context_limit),
                    elem_id="thinchat-info",
                )
            with gr.Column(scale=3, min_width=360):
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
        rows = example_rows(lang, examples_dir)
        if rows:
            gr.Examples(rows, inputs=[ppl, xpl, textbox], label=s["examples"], examples_per_page=6)

        # Check each upload as it arrives (raw payload: gradio's own preprocessing would open the file and
        # put its server path in the error); an unreadable one is cleared with a toast naming the view.
        for view, component in (("ppl", ppl), ("xpl", xpl)):
            component.upload(
                functools.partial(chat.check_upload, view=view),
                [component, language],
                [component],
                preprocess=False,
                concurrency_limit=None,  # a cheap header check: never wait behind a generating request
                show_progress="hidden",
                api_name=f"check_{view}_upload",
                api_visibility="undocumented",
            )
        sliders = [temperature, top_p, max_tokens]
        ask_inputs = [textbox, ppl, xpl, chatbot, state, *sliders, language]
        for trigger in (send.click, textbox.submit):
            trigger(
                chat.submit,
                ask_inputs,
                [chatbot, state, textbox],
                concurrency_limit=1,
                show_progress="minimal",
            )
        regenerate.click(
            chat.regenerate,
            [chatbot, state, *sliders, language],
            [chatbot, state, textbox],
            concurrency_limit=1,
            show_progress="minimal",
        )
        clear.click(chat.clear, [state], [chatbot, state, textbox], queue=False)
        chatbot.clear(
            chat.clear, [state], [chatbot, state, textbox], queue=False
        )  # the chatbot's own trash icon

        def relabel(new_lang: str):
            t = strings(new_lang)
            return (
                header(t),
                gr.Image(label=t["ppl"]),
                gr.Image(label=t["xpl"]),
                gr.Accordion(label=t["settings"]),
                gr.Slider(label=t["temperature"]),
                gr.Slider(label=t["top_p"]),
                gr.Slider(label=t["max_tokens"]),
                gr.Radio(label=t["language"]),
                t["model_info"].format(name=engine.name, context=engine.context_limit),
                gr.Chatbot(label=t["chatbot"], placeholder=t["placeholder"]),
                gr.Textbox(label=t["input"], placeholder=t["placeholder"]),
                gr.Button(t["send"]),
                gr.Button(t["regenerate"]),
                gr.Button(t["clear"]),
            )

        language.change(
            relabel,
            [language],
            [
                title,
                ppl,
                xpl,
                settings_box,
                *sliders,
                language,
                info,
                chatbot,
                textbox,
                send,
                regenerate,
                clear,
            ],
            queue=False,
        )
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
