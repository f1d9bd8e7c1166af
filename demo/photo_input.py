"""The demo's photo field, in a module of its own: gradio writes a typing stub (.pyi) next to the
module that defines a component subclass, and this keeps that stub to this one class."""

from __future__ import annotations

from typing import Any

import gradio as gr


class PhotoInput(gr.Image):
    """gr.Image that hands uploads to the library undecoded.

    gr.Image decodes uploads itself and fails with a stack trace on a broken file; passing the
    file on lets the library's loader answer with its own message (and its bomb guard apply).
    """

    is_template = True  # rendered by the frontend as a plain Image

    def preprocess(self, payload: Any) -> Any:
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return super().preprocess(payload)
