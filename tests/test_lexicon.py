"""Unknown prompt words read as known ones through WordNet (diffusion_core/lexicon.py)."""
from pathlib import Path

import numpy as np
import pytest

from conftest import text_pipeline
from diffusion_core.lexicon import READINGS_FILE, WORDNET_DIR, build_readings, load_readings, read_word, write_readings

# A WordNet database in miniature, in wndb(5)'s format: croissant is a kind of {roll, bun}, which is a kind of
# bread, a kind of food; "roll" commonly means the toilet roll; {car, auto, automobile} is one synset;
# scarlet is an adjective "similar to" red.
DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by Princeton University
00000001 13 n 01 food 0 000 | any substance that can be eaten
00000002 13 n 01 bread 0 001 @ 00000001 n 0000 | food made from dough
00000003 13 n 02 roll 0 bun 0 001 @ 00000002 n 0000 | small rounded bread
00000004 06 n 02 roll 0 toilet_roll 0 000 | a roll of toilet paper
00000005 13 n 01 croissant 0 001 @ 00000003 n 0000 | a flaky crescent roll
00000006 06 n 03 car 0 auto 0 automobile 0 000 | a motor vehicle
00000007 04 n 01 roll 0 000 | rotation about an axis
"""
INDEX_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by Princeton University
auto n 1 0 1 0 00000006
automobile n 1 0 1 0 00000006
bread n 1 1 @ 1 0 00000002
bun n 1 1 @ 1 0 00000003
car n 1 0 1 0 00000006
croissant n 1 1 @ 1 0 00000005
food n 1 0 1 0 00000001
roll n 3 1 @ 3 0 00000004 00000007 00000003
toilet_roll n 1 0 1 0 00000004
"""
DATA_ADJ = """\
00000010 00 a 01 red 0 000 | having the colour of blood
00000011 00 s 01 scarlet 0 001 & 00000010 a 0000 | a brilliant red
"""
INDEX_ADJ = """\
red a 1 0 1 0 00000010
scarlet a 1 1 & 1 0 00000011
"""


@pytest.fixture
def wordnet(tmp_path):
    for name, text in (("data.noun", DATA_NOUN), ("index.noun", INDEX_NOUN), ("data.adj", DATA_ADJ), ("index.adj", INDEX_ADJ)):
        (tmp_path / name).write_text(text)
    return tmp_path


def test_an_unknown_word_reads_as_the_nearest_known_word_up_its_hypernyms(wordnet):
    known = {"bread": 3, "roll": 5, "car": 10, "auto": 1, "food": 7, "red": 2}
    readings = build_readings(known, wordnet)
    # croissant's parent {roll, bun} is not what "roll" commonly means (its commonest senses are the toilet roll
    # and a rotation), so bread, two links up and bread's own sense, comes first; roll (a link up, by name only)
    # is the fallback; food is further than both
    assert readings["croissant"] == ["bread", "roll"]
    assert readings["automobile"] == ["car", "auto"]  # the same synset: synonyms, the commoner word first
    assert readings["bun"] == ["roll"]  # a synonym in its own synset: no penalty, and nothing further up is nearer
    assert readings["scarlet"] == ["red"]  # adjectives through "similar to"
    assert set(readings) == {"croissant", "automobile", "bun", "scarlet"}  # known words and toilet_roll get none


def test_read_word_tries_singulars_then_the_readings_the_vocabulary_holds():
    readings = {"croissant": ["bread", "roll"]}
    assert read_word("cars", {"car": 0}, readings) == "car"
    assert read_word("croissants", {"bread": 0}, readings) == "bread"
    assert read_word("croissant", {"roll": 0}, readings) == "roll"  # this model lacks bread: the next reading
    assert read_word("croissant", {"cake": 0}, readings) is None
    assert read_word("cherries", {"cherry": 0}, readings) == "cherry"


def test_the_readings_file_is_byte_identical_for_the_same_readings(tmp_path):
    a = write_readings({"b": ["x"], "a": ["y", "z"]}, tmp_path / "a.json.gz")
    b = write_readings({"a": ["y", "z"], "b": ["x"]}, tmp_path / "b.json.gz")
    assert a.read_bytes() == b.read_bytes()
    assert load_readings(str(a)) == {"a": ["y", "z"], "b": ["x"]}
    assert load_readings(str(tmp_path / "missing.json.gz")) == {}


def test_the_shipped_readings_map_emoji_words():
    readings = load_readings()
    assert readings["croissant"][0] == "bread" and readings["automobile"][0] == "car" and readings["poodle"][0] == "dog"
    assert "apple" not in readings  # a word the emoji data has is read as itself


@pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(), reason="Debian's wordnet-base is not installed")
def test_the_shipped_readings_rebuild_from_wordnet_byte_for_byte(tmp_path):
    from diffusion_core.lexicon import build_wordnet_readings

    result = build_wordnet_readings(tmp_path / "readings.json.gz")
    assert Path(result["path"]).read_bytes() == READINGS_FILE.read_bytes()


def test_a_prompt_word_the_model_never_saw_draws_as_the_word_it_is_read_as(vocab):
    pipe = text_pipeline(vocab)  # knows: red, apple, cat, face, flag, japan
    read = pipe.generate(num_images=2, prompt="Crimson apples", sampler="ddim", steps=3, seed=4)
    same = pipe.generate(num_images=2, prompt="red apple", sampler="ddim", steps=3, seed=4)
    assert read.read_as == {"crimson": "red", "apples": "apple"} and read.unknown_words == []
    np.testing.assert_array_equal(read.images, same.images)
    literal = pipe.generate(num_images=2, prompt="Crimson apples", sampler="ddim", steps=3, seed=4, read_words=False)
    assert literal.read_as == {} and literal.unknown_words == ["crimson", "apples"]
    assert not np.array_equal(literal.images, same.images)
    assert pipe.read_prompt(["nippon", "xyzzy cat"]) == (["japan", "xyzzy cat"], {"nippon": "japan"})
