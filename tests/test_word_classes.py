"""Words to a class blend, for models without text."""
import pytest

from diffusion_core.data import load_emoji
from diffusion_core.word_classes import match_words


@pytest.fixture(scope="module")
def emoji():
    return load_emoji(split="all")


@pytest.mark.parametrize("prompt,blend", [
    ("red apple", {"food_drink": 1.0}),
    ("Flag: Japan", {"flag": 1.0}),
    ("rocket", {"travel_places": 1.0}),   # the rocket, not the astronauts whose keywords say rocket
    ("red heart", {"symbol": 1.0}),
])
def test_words_find_the_class_of_the_emoji_they_name(emoji, prompt, blend):
    assert match_words(prompt, emoji).blend == blend


def test_a_word_shared_by_classes_gives_a_blend_and_unknown_words_are_reported(emoji):
    cat = match_words("cat", emoji)
    assert cat.blend["face"] == 1.0 and 0 < cat.blend["animal_nature"] < 1  # cat faces are smileys
    assert "cat" in cat.examples
    odd = match_words("zebra xyzzy", emoji)
    assert odd.blend == {"animal_nature": 1.0} and odd.unknown_words == ["xyzzy"]
    assert match_words("xyzzy", emoji).blend == {}


def test_a_word_in_no_emoji_name_is_read_through_wordnet_first():
    train = load_emoji(split="train")  # croissant is a held-out emoji: no training name or keyword holds it
    read = match_words("croissant", train)
    assert read.read_as == {"croissant": "bread"} and read.blend == {"food_drink": 1.0} and read.unknown_words == []
    literal = match_words("croissant", train, read_words=False)
    assert literal.blend == {} and literal.unknown_words == ["croissant"] and literal.read_as == {}
