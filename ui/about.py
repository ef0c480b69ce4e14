"""Tab "About": where the weights came from, the device, and the model card."""
from __future__ import annotations

import gradio as gr

from .common import App


def about_text(app: App) -> str:
    pipe = app.pipe
    card_path = pipe.folder / "README.md" if pipe.folder else None
    card = card_path.read_text() if card_path and card_path.exists() else "(no model card found)"
    if card.startswith("---"):
        card = card.split("---", 2)[2]  # drop the YAML front matter
    return (f"{app.source_note}\n\nDevice: `{pipe.device}`, network precision: `{pipe.dtype}`, "
            f"labels: {', '.join(pipe.labels)}; styles: {', '.join(pipe.styles) or 'none'}; "
            f"text prompts: {'yes' if app.has_text else 'no'}; default sampling: {app.sampling}.\n\n---\n{card}")


def build(app: App) -> None:
    with gr.Tab("About"):
        gr.Markdown(about_text(app))
