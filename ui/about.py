"""Tab "About": where the weights came from, the device, and the model card."""
from __future__ import annotations

import gradio as gr

from .common import App


def model_card(pipe) -> str:
    card_path = pipe.folder / "README.md" if pipe.folder else None
    card = card_path.read_text() if card_path and card_path.exists() else "(no model card found)"
    return card.split("---", 2)[2] if card.startswith("---") else card  # without the YAML front matter


def about_text(app: App) -> str:
    pipe, fast = app.pipe, app.fast
    fast_part = "" if fast is None else (
        f"\n\n---\n**The fast model** (Context and Prompt tabs), `{fast.source}`: default sampling "
        f"{fast.default_sampling}.\n\n<details><summary>its model card</summary>\n\n{model_card(fast)}\n</details>")
    return (f"{app.source_note}\n\nDevice: `{pipe.device}`, network precision: `{pipe.dtype}`, "
            f"labels: {', '.join(pipe.labels)}; styles: {', '.join(pipe.styles) or 'none'}; "
            f"text prompts: {'yes' if app.has_text else 'no'}; default sampling: {app.sampling}.\n\n---\n"
            f"{model_card(pipe)}{fast_part}")


def build(app: App) -> None:
    with gr.Tab("About"):
        gr.Markdown(about_text(app))
