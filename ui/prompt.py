"""Tab "Prompt": type what to draw (a text model); unknown words are listed, never an error."""
from __future__ import annotations

import gradio as gr

from diffusion_core.data import load_emoji
from diffusion_core.named_sprite import NAMED_STRENGTH, find_named_sprite
from diffusion_core.pipeline import MAX_IMAGES
from diffusion_core.sdedit import start_timestep
from diffusion_core.viz import upscale
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
NAMED_EXPLANATION = r"""
**Start from the emoji it names** (a second way, not the model reading your words alone): the training emoji
whose name matches your words best (then its keywords, then the WordNet reading of unknown words) is taken
in a style other than the one you ask for, noised part of the way, to $t_0 = \mathrm{round}(s\,(T-1))$ for the
strength $s$, $x_{t_0} = \sqrt{\bar\alpha_{t_0}}\,x_0 + \sqrt{1-\bar\alpha_{t_0}}\,\epsilon$, and redrawn
from there with the prompt, class and style (SDEdit, as in the Sketch tab). The sprite it started from is
shown. At low strength the result is a copy of that sprite; near 1 the sprite is forgotten; in between
the model keeps the emoji's colours and layout and draws it in the style asked for.
"""
EXAMPLE_PROMPTS = ["red apple", "grinning face", "cat face", "pizza", "rocket", "flag: Japan", "red heart",
                   "sun", "dog", "house", "fruit", "happy", "car", "tree"]
FROM_WORDS = "from the words"  # text models: the classes whose emoji match the words, given beside the prompt
NO_TEXT = ("This model was trained without text, so it cannot read prompts itself: your words are looked up in the "
           "emoji names and keywords, and the model draws the classes of the emoji that match (a class blend, as "
           "in the Context tab). A text model (`python app.py --model FOLDER`) reads the prompt itself.")


def build(app: App) -> None:
    labels, styles = app.pipe.labels, app.pipe.styles
    size = app.pipe.model.image_size
    # the training emoji a prompt can start from (the shipped data at the model's size, with names)
    named_data = load_emoji(split="train") if app.real is not None and app.real.names is not None else None

    class_choices = [FROM_WORDS, ANY, *labels] if app.has_text else [ANY, *labels]

    def named_sprite(prompt, style):
        """The training emoji the prompt names, in a style other than ``style`` (None: no name matches)."""
        return find_named_sprite(named_data, prompt, avoid_style=None if style == ANY else style)

    def show_named(prompt, style, from_emoji):
        """The sprite "start from the emoji it names" starts from, and its name and style."""
        try:
            prompt, style = as_text(prompt, "prompt"), as_choice(style, "style", [ANY, *styles])
        except gr.Error:
            return None, ""
        found = named_sprite(prompt, style) if named_data is not None and prompt else None
        if found is None:
            return None, "No training emoji's name or keywords match these words." if prompt else ""
        use = "starts from" if from_emoji is True else "would start from (tick the box)"
        return (upscale(named_data.images[found.index][None], 4)[0],
                f"It {use} **{found.name}**, {found.style} style (training sprite {found.index}).")

    def start_from_named(prompt, style, from_emoji, strength, steps):
        """(generate's editing arguments, the steps to run, a note) for "start from the emoji it names"."""
        if not isinstance(from_emoji, bool):
            raise gr.Error(f"start from the emoji it names must be true or false, got {from_emoji!r}")
        strength = as_float(strength, "strength", 0.0, 1.0)
        if not from_emoji:
            return {}, steps, ""
        if named_data is None:
            raise gr.Error("this model has no emoji sprites to start from; untick “start from the emoji it names”")
        found = find_named_sprite(named_data, prompt, avoid_style=style)
        if found is None:
            return {}, steps, ("⚠️ No training emoji's name or keywords match these words, so it drew from the words "
                               "alone. ")
        t_start = start_timestep(strength, app.T)
        run_steps = max(1, min(steps, t_start + 1))  # the shortened chain t_0, ..., 0 holds t_0 + 1 timesteps
        fewer = f", {run_steps} steps (at most {t_start + 1} at this strength)" if run_steps < steps else ""
        note = (f"Started from the emoji it names: **{found.name}** ({found.style} sprite {found.index}), "
                f"strength {strength:g} (t₀ = {t_start}){fewer}. ")
        return {"init_image": named_data.images[found.index], "strength": strength}, run_steps, note

    def words_match(prompt):
        """The class blend of the emoji whose names and keywords hold the words (None without emoji data)."""
        return None if app.real is None or app.real.names is None else match_words(prompt, app.real)

    def generate_prompt(prompt, class_name, style, guidance, sampler, steps, num_images, seed, model=FULL,
                        from_emoji=False, strength=NAMED_STRENGTH, progress=gr.Progress()):
        prompt = as_text(prompt, "prompt")
        class_name = as_choice(class_name, "class", class_choices)
        style = as_choice(style, "style", [ANY, *styles])
        guidance = as_float(guidance, "guidance", 0.0, MAX_GUIDANCE)
        sampler, steps, num_images, seed = app.check_common(sampler, steps, num_images, seed,
                                                            branches=app.branches(model, guidance))
        if not prompt:
            raise gr.Error("type a prompt, e.g. 'red apple'")
        style = None if style == ANY else style
        edit, steps, named = start_from_named(prompt, style, from_emoji, strength, steps)
        if app.has_text:
            match = words_match(prompt) if class_name == FROM_WORDS else None
            blend = match.blend if match else {} if class_name in (FROM_WORDS, ANY) else {class_name: 1.0}
            out = app.run(progress, "sampling", model=model, num_images=num_images, prompt=prompt, blend=blend or None,
                          style=style, sampler=sampler, steps=steps, guidance=guidance, seed=seed, **edit)
            drawn = f" → {describe_blend(blend)}{' (from the words)' if match else ''} + the prompt" if blend else ""
            return (gallery_of(out.images), f"{named}“{prompt}”{drawn}, guidance {guidance:g}: {out.seconds:.2f} s "
                    f"({model_note(app, model, steps)})" + unknown_note(out.unknown_words, out.dropped_words, out.read_as))
        match = words_match(prompt)
        if match is None:
            raise gr.Error("this model reads no text and has no emoji names to look the words up in; use Context")
        blend = {**match.blend, **({class_name: 1.0} if class_name != ANY else {})}
        out = app.run(progress, "sampling", model=model, num_images=num_images, blend=blend or None, style=style, sampler=sampler,
                      steps=steps, guidance=guidance if blend or style else 1.0, seed=seed, **edit)
        drawn = describe_blend(blend) or "no class (no word matched)"
        found = f" (matching emoji: {', '.join(match.examples)})" if match.examples else ""
        return (gallery_of(out.images), f"{named}“{prompt}” → {drawn}{found}, guidance {guidance:g}: "
                f"{out.seconds:.2f} s "
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
                with gr.Group(visible=named_data is not None):  # a second way, labelled as what it is
                    from_emoji = gr.Checkbox(False, label="start from the emoji it names: its training sprite in "
                                             "another style, noised to the strength and redrawn with the prompt")
                    strength = gr.Slider(0, 1, value=NAMED_STRENGTH, step=0.01,
                                         label="strength (0 keeps the sprite, 1 ignores it)")
                guidance = guidance_slider(app)
                sampler, steps, num, seed, button = run_controls(app, MAX_IMAGES, 16, "Generate")
                model, live = model_controls(app, sampler, steps)
            with gr.Column(scale=2):
                with gr.Row(visible=named_data is not None):
                    named_image = gr.Image(label="the emoji it names", format="png", height=150, scale=0,
                                           min_width=150, show_label=True)
                    named_info = gr.Markdown()
                gallery = sprite_gallery("samples")
                info = gr.Markdown()
                explanation((EXPLANATION if app.has_text else EXPLANATION_WITHOUT_TEXT)
                            + (NAMED_EXPLANATION if named_data is not None else "")
                            + (FAST_EXPLANATION if app.fast is not None else ""))
        # the added controls come last, so calls made before they existed mean what they meant
        inputs = [prompt, class_name, style, guidance, sampler, steps, num, seed, model, from_emoji, strength]
        button.click(generate_prompt, inputs, [gallery, info], api_name="prompt", preprocess=False)
        prompt.submit(generate_prompt, inputs, [gallery, info], api_visibility="undocumented", preprocess=False)
        if named_data is not None:
            gr.on([prompt.change, style.change, from_emoji.change], show_named, [prompt, style, from_emoji],
                  [named_image, named_info], api_visibility="undocumented", preprocess=False, show_progress="hidden",
                  trigger_mode="always_last", concurrency_id="named_sprite", concurrency_limit=4)

        def generate_prompt_live(prompt, class_name, style, guidance, from_emoji, strength, *run,
                                 progress=gr.Progress()):
            """generate_prompt with its controls in wire_live's order (conditions first, then the run's)."""
            return generate_prompt(prompt, class_name, style, guidance, *run, from_emoji, strength, progress=progress)

        generate_prompt_live.__name__ = generate_prompt.__name__  # its route stays live_generate_prompt
        wire_live(app, live, [class_name.change, style.change, guidance.release, num.release, seed.submit,
                              from_emoji.change, strength.release], generate_prompt_live,
                  [prompt, class_name, style, guidance, from_emoji, strength, sampler, steps, num, seed, model],
                  [gallery, info])
        def readable(text: str) -> bool:  # every word known to the model's vocabulary (any, without text)
            return not app.has_text or not app.pipe.vocabulary.encode(text)[1]

        combos = [[p, c, s] for p, c, s in (("apple", "food_drink", "twemoji"), ("smile", "face", "openmoji"))
                  if readable(p) and c in labels and s in styles]
        gr.Examples([[p, class_choices[0], ANY] for p in EXAMPLE_PROMPTS if readable(p)] + combos, [prompt, class_name, style],
                    label="examples: names, keywords, and words with a class and style (click one, then Generate)",
                    cache_examples=False)
