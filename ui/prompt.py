"""Tab "Prompt": type what to draw (a text model); unknown words are listed, never an error."""
from __future__ import annotations

import gradio as gr

from diffusion_core.pipeline import MAX_IMAGES
from diffusion_core.word_classes import match_words

from .common import (ANY, FAST_EXPLANATION, FULL, MAX_GUIDANCE, App, as_choice, as_float, as_text, describe_blend,
                     explanation, gallery_of, guidance_slider, model_controls, model_note, run_controls, sprite_gallery,
                     unknown_note, wire_live)

EXPLANATION = r"""
The prompt is split into words; each known word becomes a token id. A word the model never saw is read as
one it knows where WordNet's "is a kind of" links lead to one ("croissant" → bread → food: the first known
word going up), and said so under the pictures; words with no such reading are dropped and listed. A small transformer, trained together with the U-Net, turns the tokens into
vectors $e_1 \dots e_L$. Inside the U-Net's attention blocks at 8x8 and 4x4, every pixel position asks
the words what to draw (cross-attention, as in latent diffusion and Imagen):
$$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\Big(\frac{Q K^\top}{\sqrt d}\Big) V,\quad Q = W_Q h,\; K = W_K e,\; V = W_V e$$
Training sometimes drops the text, so the empty prompt $\varnothing$ is "no text", and guidance works as in
the Context tab: $\hat\epsilon = \epsilon_\theta(x_t, \varnothing) + w\,(\epsilon_\theta(x_t, \text{prompt}) - \epsilon_\theta(x_t, \varnothing))$.
The model learned from emoji names ("red apple", "grinning face") and their keywords ("fruit", "smile").

With class "from the words" (the default), the context vector $c$ is given too: the classes of the emoji
whose names and keywords hold your words, as in the Context tab ("red apple" → food_drink). The model was
trained with text and context together, and a small model on a CPU budget learns the eight classes long
before it learns 1,700 names: choose "any" to see what the text alone draws.
"""
EXPLANATION_WITHOUT_TEXT = r"""
This model has no text encoder: it was trained on a context vector $c$ of class and style weights only.
So the tab does what it can with your words: it finds the emoji whose names and keywords hold them
(preferring those whose name does), counts which classes those emoji belong to, and draws that blend,
$$c = \big(\tfrac{n_1}{n_{max}}, \dots, \tfrac{n_8}{n_{max}}\big),\qquad n_k = \text{matching emoji of class } k,$$
with classifier-free guidance as in the Context tab. "red apple" becomes the class food_drink; the model
cannot tell an apple from a pizza. A text model learns the words themselves: each known word becomes a
token, a small transformer turns the tokens into vectors, and the U-Net reads them by cross-attention,
$\mathrm{softmax}(QK^\top/\sqrt d)\,V$ with the queries from the pixels and the keys and values from the words.
"""
EXAMPLE_PROMPTS = ["red apple", "grinning face", "cat face", "pizza", "rocket", "flag: Japan", "red heart",
                   "sun", "dog", "house", "fruit", "happy", "car", "tree"]
FROM_WORDS = "from the words"  # text models: the classes whose emoji match the words, given beside the prompt
NO_TEXT = ("This model was trained without text, so it cannot read prompts itself: your words are looked up in the "
           "emoji names and keywords, and the model draws the classes of the emoji that match (a class blend, as "
           "in the Context tab). A text model (`python app.py --model FOLDER`) reads the prompt itself.")


def build(app: App) -> None:
    labels, styles = app.pipe.labels, app.pipe.styles

    class_choices = [FROM_WORDS, ANY, *labels] if app.has_text else [ANY, *labels]

    def words_match(prompt):
        """The class blend of the emoji whose names and keywords hold the words (None without emoji data)."""
        return None if app.real is None or app.real.names is None else match_words(prompt, app.real)

    def generate_prompt(prompt, class_name, style, guidance, sampler, steps, num_images, seed, model=FULL,
                        progress=gr.Progress()):
        prompt = as_text(prompt, "prompt")
        class_name = as_choice(class_name, "class", class_choices)
        style = as_choice(style, "style", [ANY, *styles])
        guidance = as_float(guidance, "guidance", 0.0, MAX_GUIDANCE)
        sampler, steps, num_images, seed = app.check_common(sampler, steps, num_images, seed,
                                                            branches=app.branches(model, guidance))
        if not prompt:
            raise gr.Error("type a prompt, e.g. 'red apple'")
        style = None if style == ANY else style
        if app.has_text:
            match = words_match(prompt) if class_name == FROM_WORDS else None
            blend = match.blend if match else {} if class_name in (FROM_WORDS, ANY) else {class_name: 1.0}
            out = app.run(progress, "sampling", model=model, num_images=num_images, prompt=prompt, blend=blend or None,
                          style=style, sampler=sampler, steps=steps, guidance=guidance, seed=seed)
            drawn = f" → {describe_blend(blend)}{' (from the words)' if match else ''} + the prompt" if blend else ""
            return (gallery_of(out.images), f"“{prompt}”{drawn}, guidance {guidance:g}: {out.seconds:.2f} s "
                    f"({model_note(app, model, steps)})" + unknown_note(out.unknown_words, out.dropped_words, out.read_as))
        match = words_match(prompt)
        if match is None:
            raise gr.Error("this model reads no text and has no emoji names to look the words up in; use Context")
        blend = {**match.blend, **({class_name: 1.0} if class_name != ANY else {})}
        out = app.run(progress, "sampling", model=model, num_images=num_images, blend=blend or None, style=style, sampler=sampler,
                      steps=steps, guidance=guidance if blend or style else 1.0, seed=seed)
        drawn = describe_blend(blend) or "no class (no word matched)"
        found = f" (matching emoji: {', '.join(match.examples)})" if match.examples else ""
        return (gallery_of(out.images), f"“{prompt}” → {drawn}{found}, guidance {guidance:g}: {out.seconds:.2f} s "
                f"({model_note(app, model, steps)})" + unknown_note(match.unknown_words, (), match.read_as))

    with gr.Tab("Prompt"):
        if not app.has_text:
            gr.Markdown(f"ℹ️ {NO_TEXT}")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox("red apple", label="prompt", max_lines=1, max_length=200)
                class_name = gr.Dropdown(class_choices, value=class_choices[0],
                                         label="class (combines with the prompt)" if app.has_text else
                                         "class (optional, combines with the prompt's classes)")
                style = gr.Radio([ANY, *styles], value=ANY, label="style")
                guidance = guidance_slider(app)
                sampler, steps, num, seed, button = run_controls(app, MAX_IMAGES, 16, "Generate")
                model, live = model_controls(app, sampler, steps)
            with gr.Column(scale=2):
                gallery = sprite_gallery("samples")
                info = gr.Markdown()
                explanation((EXPLANATION if app.has_text else EXPLANATION_WITHOUT_TEXT)
                            + (FAST_EXPLANATION if app.fast is not None else ""))
        inputs = [prompt, class_name, style, guidance, sampler, steps, num, seed, model]
        button.click(generate_prompt, inputs, [gallery, info], api_name="prompt", preprocess=False)
        prompt.submit(generate_prompt, inputs, [gallery, info], api_visibility="undocumented", preprocess=False)
        wire_live(app, live, [class_name.change, style.change, guidance.release, num.release, seed.submit],
                  generate_prompt, inputs, [gallery, info])
        def readable(text: str) -> bool:  # every word known to the model's vocabulary (any, without text)
            return not app.has_text or not app.pipe.vocabulary.encode(text)[1]

        combos = [[p, c, s] for p, c, s in (("apple", "food_drink", "twemoji"), ("smile", "face", "openmoji"))
                  if readable(p) and c in labels and s in styles]
        gr.Examples([[p, class_choices[0], ANY] for p in EXAMPLE_PROMPTS if readable(p)] + combos, [prompt, class_name, style],
                    label="examples: names, keywords, and words with a class and style (click one, then Generate)",
                    cache_examples=False)
