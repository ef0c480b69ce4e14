"""The training emoji a prompt names: the picture "start from the emoji it names" edits (sdedit.py).

The shipped model cannot yet draw "red apple" from the words alone, but the data holds the red apple in
five styles. So a prompt can start from the emoji it names: that emoji's sprite, in a style other than
the one asked for, noised part of the way and redrawn with the prompt, class and style (SDEdit, Meng et
al. 2022). This module only finds the sprite.

A prompt's words are matched against each emoji's CLDR short name and keywords: a word of the name
counts 1, a word only among the keywords ½, and the score is their mean over the prompt's words. A word
that no name or keyword holds is read as one that does through WordNet (``lexicon.read_word``: a
singular form, or the nearest known word up the "is a kind of" links), as a text model reads it. Ties
go to the emoji whose name is the prompt's words in order ("family: man, girl, girl" before "family: man,
man, girl"), then to the one whose name has fewer words the prompt lacks ("cat" before "cat face"), then
to the one first in the data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import SpriteData, load_emoji
from .lexicon import read_word
from .text import words

NAME_WEIGHT, KEYWORD_WEIGHT = 1.0, 0.5
STOP_WORDS = {"a", "an", "the", "of", "with", "and", "in", "on", "at", "to"}  # match too many names to mean one
# strength at which a named emoji is redrawn by default: measured per style in
# benchmarks/results/named_sprite_emoji32.md (benchmarks/named_sprite.py)
NAMED_STRENGTH = 0.8


@dataclass
class NamedSprite:
    index: int     # the sprite's row in the data it was found in
    name: str      # the emoji's CLDR short name
    style: str     # the style of this sprite
    score: float   # how well the prompt's words match: 1 = every word is in the name


def prompt_words(data: SpriteData, prompt: str) -> list[str]:
    """The prompt's words but ``STOP_WORDS``, in order, each unknown one read as a word of the data's names or
    keywords (WordNet); words with no reading are dropped."""
    known = {w for text in (*data.names.tolist(), *data.keywords.tolist()) for w in words(text)}
    out = []
    for word in words(prompt):
        if word in STOP_WORDS:
            continue
        reading = read_word(word, known)
        if reading is not None:
            out.append(reading)
    return out


def find_named_sprite(data: SpriteData | None, prompt: str, avoid_style: str | None = None) -> NamedSprite | None:
    """The sprite of the emoji whose name (or keywords, or the WordNet reading of unknown words) matches the
    prompt's words best, in a style other than ``avoid_style``; None when no word matches any emoji (or the
    matching ones exist only in ``avoid_style``). ``data``: the sprites to choose from, by default the
    training emoji (``load_emoji(split="train")``, split 0)."""
    data = load_emoji(split="train") if data is None else data
    if data.names is None or data.keywords is None:
        raise ValueError("named sprites need a data set with emoji names and keywords (the emoji data)")
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be text, got {type(prompt).__name__}")
    if avoid_style is not None and avoid_style not in data.style_names:
        raise ValueError(f"unknown style {avoid_style!r}; styles are {list(data.style_names)}")
    wanted = prompt_words(data, prompt)
    if not wanted:
        return None
    names = data.names.tolist()
    first_row = {}
    for row, name in enumerate(names):
        first_row.setdefault(name, row)
    ranked = []
    for name, row in first_row.items():
        name_list = [w for w in words(name) if w not in STOP_WORDS]
        name_words = set(name_list)
        keyword_words = {w for k in str(data.keywords[row]).split("|") for w in words(k)}
        score = sum(NAME_WEIGHT if w in name_words else KEYWORD_WEIGHT if w in keyword_words else 0.0
                    for w in wanted) / len(wanted)
        if score > 0:
            ranked.append((-score, name_list != wanted, len(name_words - set(wanted)), row, name))
    styles = data.style_index()
    allowed = styles != (-1 if avoid_style is None else data.style_names.index(avoid_style))
    names_array = np.asarray(names)
    for negative_score, *_, name in sorted(ranked):
        rows = np.flatnonzero((names_array == name) & allowed)
        if len(rows):
            index = int(rows[0])
            return NamedSprite(index, name, data.style_names[styles[index]], -negative_score)
    return None
