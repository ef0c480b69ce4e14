"""Words the model never saw, read as words it knows, through WordNet's "is a kind of" links.

A text model knows only the words of its training names and keywords (text.py); "croissant" is not
one of them. WordNet (Miller 1995, "WordNet: a lexical database for English") groups words into
synsets (sets of synonyms, one per sense) linked to more general synsets by hypernymy:
croissant -> roll -> bread -> baked goods -> food. An unknown word is read as the first known word met
going up those links from its commonest senses: "croissant" as "bread", "automobile" as "car" (the
same synset), "poodle" as "dog".

A known word only matches through its own commonest senses (its "home"): "roll" is a known word
(the roll of paper), but croissant's hypernym {roll, bun} is not the synset "roll" usually means, so
croissant goes on to "bread". Readings are computed once, against every word of the emoji data's names,
keywords and class names, and shipped as ``wordnet_readings.json.gz`` beside this file (built from
Debian's `wordnet-base` by ``python -m diffusion_core build-data wordnet``; WordNet 3.0 licence in
assets/LICENSES.md). A model uses the first reading its own vocabulary holds.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

from .text import data_texts, words

READINGS_FILE = Path(__file__).resolve().parent / "wordnet_readings.json.gz"
# WordNet's licence asks that its notice go with every copy, modified ones included: the readings file carries it
WORDNET_NOTICE = ("Derived from WordNet 3.0 (Debian wordnet-base 1:3.0-37). WordNet 3.0 Copyright 2006 by Princeton "
                  "University. All rights reserved. THIS SOFTWARE AND DATABASE IS PROVIDED \"AS IS\" AND PRINCETON "
                  "UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. Full licence: "
                  "assets/licenses/wordnet.copyright.txt, https://wordnet.princeton.edu/license-and-commercial-use")
WORDNET_DIR = Path("/usr/share/wordnet")   # Debian's wordnet-base
NOUN_SENSES, ADJ_SENSES = 3, 2             # an unknown word's senses followed, commonest first
HOME_SENSES = 2                            # a known word's senses it is matched through
MAX_DEPTH = 8                              # hypernym links followed up from a sense
SENSE_COST = 3                             # links a word's next sense counts as (WordNet lists senses commonest first)
LEMMA_PENALTY = 2                          # links added to a match by name only (not the word's home)
READINGS_KEPT = 3                          # candidates kept per word (a model's vocabulary may lack the first)
HYPERNYM = {"n": ("@", "@i"), "a": ("&",)}  # noun: (instance) hypernym; adjective: "similar to" its head
WORD = re.compile(r"[a-z0-9]+")


# ---------------------------------------------------------------------------------------------
# WordNet's files (wndb(5)): data.POS holds the synsets, index.POS each lemma's synsets by frequency
# ---------------------------------------------------------------------------------------------
def read_synsets(folder: Path, pos: str) -> dict[str, tuple[list[str], list[str]]]:
    """{synset id: (its one-word lemmas, its hypernym ids)} of data.noun ("n") or data.adj ("a")."""
    synsets = {}
    for line in (folder / f"data.{'noun' if pos == 'n' else 'adj'}").read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):  # the licence header
            continue
        fields = line.split(" | ")[0].split()
        offset, count = fields[0], int(fields[3], 16)
        lemmas = [re.sub(r"\(.*\)$", "", w).lower() for w in fields[4:4 + 2 * count:2]]
        at = 4 + 2 * count
        links = []
        for i in range(int(fields[at])):
            symbol, target, target_pos = fields[at + 1 + 4 * i: at + 4 + 4 * i]
            if symbol in HYPERNYM[pos]:
                links.append(("a" if target_pos == "s" else target_pos) + target)
        synsets[pos + offset] = ([w for w in lemmas if WORD.fullmatch(w)], links)
    return synsets


def read_index(folder: Path, pos: str) -> dict[str, list[str]]:
    """{one-word lemma: its synset ids, commonest sense first}."""
    index = {}
    for line in (folder / f"index.{'noun' if pos == 'n' else 'adj'}").read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        fields = line.split()
        lemma, count = fields[0], int(fields[2])
        if WORD.fullmatch(lemma):
            index[lemma] = [pos + offset for offset in fields[-count:]]
    return index


def build_readings(known_words: dict[str, int], folder: Path = WORDNET_DIR) -> dict[str, list[str]]:
    """For every one-word WordNet noun and adjective not in ``known_words`` ({word: how often the training
    texts use it}): up to READINGS_KEPT known words, nearest first: links up from the sense, plus SENSE_COST
    for each commoner sense before it; ties go to the word the training texts use more."""
    synsets = {**read_synsets(folder, "n"), **read_synsets(folder, "a")}
    index_n, index_a = read_index(folder, "n"), read_index(folder, "a")
    home = defaultdict(set)  # synset -> the known words whose commonest senses it is
    for word in known_words:
        for synset in index_n.get(word, [])[:HOME_SENSES] + index_a.get(word, [])[:1]:
            home[synset].add(word)
    readings = {}
    for word in sorted(set(index_n) | set(index_a)):
        if word in known_words:
            continue
        best: dict[str, int] = {}
        for rank, sense in enumerate(index_n.get(word, [])[:NOUN_SENSES] + index_a.get(word, [])[:ADJ_SENSES]):
            for hit, links in known_above(sense, synsets, home, known_words).items():
                best[hit] = min(best.get(hit, 99), SENSE_COST * rank + links)
        if best:
            readings[word] = sorted(best, key=lambda w: (best[w], -known_words[w], w))[:READINGS_KEPT]
    return readings


def known_above(sense: str, synsets: dict, home: dict, known_words) -> dict[str, int]:
    """The nearest known words going up from ``sense``, each with its links: a known word's home synset is a
    hit; so is a known word that merely names a synset (the sense's own synonyms, or "cat" in {big cat, cat}),
    counted LEMMA_PENALTY links further when above the sense ({roll, bun} is not what "roll" usually means)."""
    found: dict[str, int] = {}
    level, seen = [sense], {sense}
    for depth in range(MAX_DEPTH + 1):
        if depth >= min(found.values(), default=99):  # nothing further up can be nearer
            break
        for synset in level:
            for hit in synsets.get(synset, ([], []))[0]:
                if hit in known_words:
                    found[hit] = min(found.get(hit, 99), depth + (LEMMA_PENALTY if depth else 0))
            for hit in home[synset]:
                found[hit] = min(found.get(hit, 99), depth)
        level = [h for s in level for h in synsets.get(s, ([], []))[1] if h not in seen]
        seen.update(level)
    return found


def emoji_known_words() -> Counter:
    """The words a text model trained on the emoji data knows, with how often its texts use them: every word
    of the training emoji's names, keywords and the class names (what train.training_vocabulary reads)."""
    from .data import load_emoji

    return Counter(w for text in data_texts(load_emoji(split="train")) for w in words(text))


def build_wordnet_readings(out: Path = READINGS_FILE, folder: Path = WORDNET_DIR) -> dict:
    """``python -m diffusion_core build-data wordnet``: the shipped readings, rebuilt from Debian's wordnet-base."""
    if not (folder / "data.noun").is_file():
        raise ValueError(f"WordNet's database is not at {folder} (Debian: apt-get install wordnet-base)")
    readings = build_readings(emoji_known_words(), folder)
    path = write_readings(readings, Path(out))
    return {"path": str(path), "words": len(readings), "bytes": path.stat().st_size}


def write_readings(readings: dict[str, list[str]], path: Path = READINGS_FILE) -> Path:
    """The readings (and WordNet's notice) as gzipped JSON, byte for byte the same for the same readings (no
    timestamp), atomically."""
    data = json.dumps({"licence": WORDNET_NOTICE, "readings": readings}, sort_keys=True, separators=(",", ":")).encode()
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# Reading a prompt
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def load_readings(path: str = str(READINGS_FILE)) -> dict[str, list[str]]:
    """The shipped readings ({} when the file is absent: unknown words then stay unknown)."""
    try:
        with gzip.open(path, "rt") as f:
            return json.load(f)["readings"]
    except FileNotFoundError:
        return {}


def base_forms(word: str) -> list[str]:
    """The word and its singular guesses (a small part of WordNet's morphy): "cherries" -> cherry, "foxes" -> fox."""
    forms = [word]
    for suffix, ending in (("ies", "y"), ("ches", "ch"), ("shes", "sh"), ("xes", "x"), ("ses", "s"), ("men", "man"),
                           ("s", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            forms.append(word[: -len(suffix)] + ending)
    return forms


def read_word(word: str, vocabulary_index, readings: dict[str, list[str]] | None = None) -> str | None:
    """The known word ``word`` is read as: itself if known, a singular form if known, else the first of
    its (or its singular's) WordNet readings the vocabulary holds; None when there is none."""
    readings = load_readings() if readings is None else readings
    forms = base_forms(word)
    for form in forms:
        if form in vocabulary_index:
            return form
    for form in forms:
        for reading in readings.get(form, []):
            if reading in vocabulary_index:
                return reading
    return None
