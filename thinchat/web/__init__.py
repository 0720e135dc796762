"""Gradio web demo for thinchat (``python web_demo.py`` / ``thinchat web``).

Public API: :func:`thinchat.web.app.build_demo` (a ``gr.Blocks`` for a ``ChatEngine``),
:func:`thinchat.web.app.launch`, and :class:`thinchat.web.chat.WebChat` (the handlers). Import them from
their modules: this package does not import gradio until asked.
"""
