"""Words to a class blend, for models trained without text: which classes hold the emoji whose names
or keywords contain the words. "red apple" -> {food_drink: 1.0}; "cat" -> mostly animal_nature, some
face (the cat faces are smileys). The model then draws that blend, so a prompt still steers a
class-conditional model, as coarsely as its classes allow.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .data import SpriteData
from .lexicon import read_word
from .text import words

MIN_SHARE = 0.1   # classes holding less than this share of the matching emoji are left out


@dataclass
class WordMatch:
    blend: dict[str, float]                              # class -> weight in 0..1, the largest 1
    examples: list[str] = field(default_factory=list)     # a few matching emoji names
    unknown_words: list[str] = field(default_factory=list)  # words in no name or keyword
    read_as: dict[str, str] = field(default_factory=dict)   # words in none, read as words that are (lexicon.py)


def match_words(prompt: str, data: SpriteData, max_examples: int = 5, read_words: bool = True) -> WordMatch:
    """The class blend of the emoji (one vote per emoji name) whose name and keywords hold every known
    word of ``prompt`` (or failing that the most of them), narrowed to those whose name holds them all
    where there are such. With ``read_words``, a word in no name or keyword is first read as one that is
    (WordNet: "croissant" as "bread"). Empty blend when no word is known."""
    if data.names is None or data.keywords is None:
        raise ValueError("matching words to classes needs a data set with names and keywords (the emoji data)")
    names, first = np.unique(data.names, return_index=True)
    emoji_words = [set(words(name)) | set(words(data.keywords[i].replace("|", " "))) for name, i in zip(names, first)]
    asked = list(dict.fromkeys(words(prompt)))
    vocabulary = set().union(*emoji_words)
    read_as = {w: read_word(w, vocabulary) for w in asked if w not in vocabulary} if read_words else {}
    read_as = {w: r for w, r in read_as.items() if r is not None}
    asked = list(dict.fromkeys(read_as.get(w, w) for w in asked))
    known = [w for w in asked if w in vocabulary]
    unknown = [w for w in asked if w not in vocabulary]
    if not known:
        return WordMatch({}, [], unknown, read_as)
    hits = np.array([sum(w in ew for w in known) for ew in emoji_words])
    chosen = np.flatnonzero(hits == hits.max())
    in_name = [i for i in chosen if set(known) <= set(words(names[i]))]
    chosen = np.array(in_name) if in_name else chosen  # "rocket" is the rocket, not the astronauts tagged rocket
    votes = np.bincount(data.labels[first[chosen]], minlength=len(data.class_names)).astype(float)
    shares = votes / votes.sum()
    kept = np.where(shares >= MIN_SHARE, shares, 0.0)
    blend = {data.class_names[c]: round(float(kept[c] / kept.max()), 2) for c in np.flatnonzero(kept)}
    examples = [str(names[i]) for i in chosen[np.argsort([len(names[i]) for i in chosen])][:max_examples]]
    return WordMatch(blend, examples, unknown, read_as)
