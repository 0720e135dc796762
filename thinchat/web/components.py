"""The demo's slide-view input: ``gr.Image`` whose unreadable upload is a toast, not a silent failure.

Why a subclass: gradio opens every uploaded image while it prepares an event's inputs, before any
handler runs, so a file that is not an image (sent before the upload check has cleared it) fails as a
processing error, which the page shows as nothing at all. Raised as ``gr.Error`` instead, the same
failure is a toast naming the view, in the page's language, and never the file's path on the server.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from thinchat.web.strings import DEFAULT_LANG, languages, strings

#: What opening a broken or hostile upload raises in PIL.
UNREADABLE = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)


class SlideImage(gr.Image):
    """One view (PPL or XPL) of a slide; the front end is gradio's own image component."""

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except UNREADABLE as exc:
            lang = next(
                (code for code in languages() if self.label in (strings(code)["ppl"], strings(code)["xpl"])),
                DEFAULT_LANG,
            )
            s = strings(lang)
            raise gr.Error(
                s["bad_image"].format(view=self.label, error=s["unreadable"]), print_exception=False
            ) from exc
