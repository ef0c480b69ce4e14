"""Data loaders: the shipped emoji arrays, the course's format, an image folder; clear errors."""
import re

import numpy as np
import pytest
from PIL import Image

from diffusion_core.data import (EMOJI_CLASSES, EMOJI_NPZ, EMOJI_STYLES, count_table, load_course_sprites, load_dataset,
                                 load_emoji, load_image_folder)
from diffusion_core.emoji_build import EMOJI_TEST, Emoji, IconSet, map_icons, read_emoji_list, slug


def test_shipped_emoji_arrays_hold_five_styles_and_a_name_and_keywords_per_sprite():
    data = load_emoji(split="all")
    assert len(data) >= 8000 and data.images.shape[1:] == (32, 32, 3) and data.images.dtype == np.uint8
    assert data.style_names == EMOJI_STYLES and data.class_names == EMOJI_CLASSES
    assert data.context.shape == (len(data), len(EMOJI_CLASSES) + len(EMOJI_STYLES))
    assert np.allclose(data.context.sum(1), 2.0)  # one class + one style
    assert (data.context[:, len(EMOJI_CLASSES):].sum(0) > 1300).all()  # every style well represented
    assert len(np.unique(data.images.reshape(len(data), -1), axis=0)) == len(data)  # no exact duplicates
    assert all(name.strip() for name in data.names)
    assert (data.keywords != "").mean() >= 0.95
    apple = data.names == "red apple"
    assert apple.sum() == len(EMOJI_STYLES) and "fruit" in data.keywords[apple][0].split("|")
    assert load_emoji(image_size=16, split="all").images.shape[1:] == (16, 16, 3)


def test_held_out_split_holds_out_whole_emoji_in_every_class():
    train, held = load_emoji(split="train"), load_emoji(split="held_out")
    assert len(train) + len(held) == len(load_emoji(split="all"))
    assert not set(train.names) & set(held.names)  # no held-out emoji in training, in any style
    assert 0.08 < len(set(held.names)) / len(set(train.names) | set(held.names)) < 0.12
    assert (np.bincount(train.labels, minlength=len(EMOJI_CLASSES)) >= 450).all()
    assert set(np.unique(held.labels)) == set(range(len(EMOJI_CLASSES)))
    assert np.array_equal(load_emoji(split="held_out").images, held.images)


def test_count_table_adds_up_to_the_file():
    table = count_table()
    total = table.splitlines()[-1]
    assert total.startswith("| all |") and f"| {len(load_emoji(split='all')):,} |" in total
    assert table.splitlines()[0] == "| class | " + " | ".join(EMOJI_STYLES) + " | all | of which held out |"


def test_an_emoji_file_without_the_v2_arrays_is_a_clear_error(tmp_path):
    with np.load(EMOJI_NPZ) as npz:
        old = {k: npz[k] for k in ("images32", "images16", "labels", "styles")}
    np.savez(tmp_path / "old.npz", **old)
    with pytest.raises(ValueError, match="missing array 'split'.*build-data emoji"):
        load_emoji(tmp_path / "old.npz")


@pytest.mark.skipif(not EMOJI_TEST.exists(), reason="Debian's unicode-data is not installed")
def test_emoji_list_drops_skin_tones_and_maps_groups_to_the_eight_classes():
    emoji = read_emoji_list()
    assert 1800 <= len(emoji) <= 1950
    assert {e.cls for e in emoji} == set(EMOJI_CLASSES)
    names = {e.name: e.cls for e in emoji}
    assert names["grinning face"] == "face" and names["red heart"] == "symbol" and names["pizza"] == "food_drink"


def test_icon_names_are_slugs_of_cldr_names():
    assert slug("woman’s hat") == "womans-hat" and slug("flag: Côte d’Ivoire") == "flag-cote-divoire"
    assert slug("A button (blood type)") == "a-button-blood-type" and slug("Trinidad & Tobago") == "trinidad-and-tobago"


EMOJI = [Emoji((0x1F34E,), "food_drink", "red apple"), Emoji((0x2764, 0xFE0F), "symbol", "red heart"),
         Emoji((0x1F408,), "animal_nature", "cat")]


def test_icons_map_to_emoji_by_codepoints_and_report_what_is_left_out():
    icons = IconSet("t", {"apple": {"body": "<g/>"}, "heart": {"body": "<g/>"}, "new": {"body": "<g/>"}}, {},
                    {"1f34e": "apple", "2764-fe0f": "heart", "1f34e-1f3fb": "apple", "1faea": "new"}, 36, 36)
    mapping = map_icons(icons, EMOJI)
    assert mapping.icons == {(0x1F34E,): "apple", (0x2764,): "heart"}
    assert mapping.skin_tone == 1 and mapping.unknown == ["new"]


def test_icons_without_codepoints_map_by_name_alias_or_a_known_rename():
    icons = IconSet("e", {"red-apple": {"body": "<g/>"}, "heavy-heart": {"body": "<g/>"}, "cat-face": {"body": "<g/>"},
                          "letter-a": {"body": "<g/>"}, "cat-medium-tone": {"body": "<g/>"}},
                    {"red-heart": {"parent": "heavy-heart"}, "cat": {"parent": "cat-face", "hFlip": True}}, {}, 64, 64)
    mapping = map_icons(icons, EMOJI)
    assert mapping.icons == {(0x1F34E,): "red-apple", (0x2764,): "heavy-heart", (0x1F408,): "cat-face"}
    assert mapping.unknown == ["letter-a"] and mapping.skin_tone == 1
    assert icons.resolve("cat") == ("cat-face", {"hFlip": True, "vFlip": False, "rotate": 0})
    assert 'viewBox="0 0 64 64"' in icons.svg("red-apple")


def test_a_damaged_icon_set_is_a_clear_error(tmp_path):
    (tmp_path / "icons.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="damaged or incomplete.*npm ci"):
        IconSet.load(tmp_path)
    with pytest.raises(RuntimeError, match="damaged or incomplete"):
        IconSet.load(tmp_path / "absent")


def test_course_format_loads_with_one_hot_context(tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((4, 16, 16, 3), np.uint8))
    np.save(tmp_path / "l.npy", np.eye(5)[[0, 1, 2, 4]])
    data = load_course_sprites(tmp_path / "s.npy", tmp_path / "l.npy")
    assert data.labels.tolist() == [0, 1, 2, 4] and data.class_names[0] == "hero"
    x, ctx = data.to_tensors()
    assert x.shape == (4, 3, 16, 16) and x.min() == -1 and ctx.shape == (4, 5)


@pytest.mark.parametrize("images,labels,message", [
    (np.zeros((4, 16, 16), np.uint8), np.eye(5)[:4], r"expected uint8 images of shape \(N, S, S, 3\)"),
    (np.zeros((4, 16, 16, 3), np.float32), np.eye(5)[:4], "expected uint8 images"),
    (np.zeros((0, 16, 16, 3), np.uint8), np.zeros((0, 5)), "holds no images"),
    (np.zeros((4, 16, 16, 3), np.uint8), np.eye(5)[:3], "expected one-hot labels of shape"),
])
def test_course_format_with_wrong_arrays_names_the_file_and_the_expectation(tmp_path, images, labels, message):
    np.save(tmp_path / "s.npy", images)
    np.save(tmp_path / "l.npy", labels)
    with pytest.raises(ValueError, match=message):
        load_course_sprites(tmp_path / "s.npy", tmp_path / "l.npy")


def test_unreadable_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="junk.npy: cannot read"):
        load_course_sprites(tmp_path / "junk.npy", tmp_path / "junk.npy")
    with pytest.raises(ValueError, match="cannot read the emoji arrays"):
        load_emoji(tmp_path / "junk.npy")


def test_image_folder_gives_one_class_per_sub_folder(tmp_path):
    for cls, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (40, 40), colour).save(tmp_path / cls / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}", image_size=16)
    assert data.class_names == ("cats", "dogs") and data.images.shape == (4, 16, 16, 3)
    assert data.labels.tolist() == [0, 0, 1, 1] and data.images[0, 0, 0].tolist() == [255, 0, 0]


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        load_image_folder(tmp_path / "absent")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="broken.png is not a picture Pillow can read"):
        load_image_folder(tmp_path)


def test_building_emoji_without_its_packages_names_each_missing_one(monkeypatch, tmp_path):
    import diffusion_core.emoji_build as build

    monkeypatch.setattr(build, "NOTO_FONT", tmp_path / "NotoColorEmoji.ttf")
    monkeypatch.setattr(build, "EMOJI_TEST", tmp_path / "emoji-test.txt")
    monkeypatch.setattr(build, "CLDR_ANNOTATIONS", (tmp_path / "en.xml",))
    monkeypatch.setattr(build, "NPM_DIR", tmp_path / "npm")
    with pytest.raises(RuntimeError) as err:
        build.build_emoji(tmp_path / "out.npz")
    message = str(err.value)
    for expected in ("apt-get install fonts-noto-color-emoji", "apt-get install unicode-data",
                     "apt-get install unicode-cldr-core", "@iconify-json/twemoji", "@iconify-json/emojione", "npm ci"):
        assert expected in message
    assert not (tmp_path / "out.npz").exists()


def _can_build_emoji() -> bool:
    from diffusion_core.emoji_build import check_emoji_build_requirements

    try:
        check_emoji_build_requirements()
        return True
    except RuntimeError:
        return False


@pytest.mark.skipif(not _can_build_emoji(), reason="the emoji build needs Debian's fonts-noto-color-emoji, "
                    "unicode-data, unicode-cldr-core, libfribidi0, requirements-data.txt and `npm ci --prefix "
                    "scripts/emoji-data` (see docs/data.md)")
def test_a_sample_of_the_emoji_rebuilds_bit_for_bit_as_the_shipped_arrays(capsys):
    """One emoji in eight, every style, through `build-data emoji --check --every 8` (the whole rebuild, the
    same command without --every, takes a minute of two cores)."""
    from diffusion_core.__main__ import main

    assert main(["build-data", "emoji", "--check", "--every", "8"]) == 0
    compared = re.search(r"the rebuild matches .*: ([\d,]+) sprites compared \(one emoji in 8\)", capsys.readouterr().out)
    assert compared and 900 < int(compared.group(1).replace(",", "")) < 1300  # about an eighth of the 8,500


def test_the_rebuild_check_names_every_damaged_missing_or_foreign_sprite():
    from diffusion_core.emoji_build import compare_emoji_arrays

    with np.load(EMOJI_NPZ) as npz:
        shipped = dict(npz)
    sampled = np.isin(shipped["names"], np.unique(shipped["names"])[::8])
    sample = {k: v[sampled] if len(v) == len(shipped["names"]) else v for k, v in shipped.items()}
    assert compare_emoji_arrays(sample, shipped) == [] and compare_emoji_arrays(shipped, shipped) == []

    damaged = {**sample, "images16": sample["images16"].copy(), "keywords": sample["keywords"].copy()}
    damaged["images16"][3, 5, 5] ^= 1
    damaged["keywords"][7] = "not|its|words"
    assert compare_emoji_arrays(damaged, shipped) == [f"{sample['names'][3]} ({EMOJI_STYLES[sample['styles'][3]]}): "
                                                      "images16 differs", f"{sample['names'][7]} "
                                                      f"({EMOJI_STYLES[sample['styles'][7]]}): keywords differs"]
    one_less = {k: np.delete(v, 0, axis=0) if len(v) == len(sample["names"]) else v for k, v in sample.items()}
    assert compare_emoji_arrays(one_less, shipped) == [f"{sample['names'][0]} ({EMOJI_STYLES[sample['styles'][0]]}): "
                                                       "shipped, but not drawn"]
    foreign = {**sample, "names": sample["names"].copy(), "images32": sample["images32"].copy()}
    foreign["names"][0], foreign["images32"][0] = "no such emoji", 255 - foreign["images32"][0]
    assert f"no such emoji ({EMOJI_STYLES[sample['styles'][0]]}): drawn, but not in the shipped file" in \
        compare_emoji_arrays(foreign, shipped)
    whole = {**shipped, "labels": shipped["labels"].copy()}
    whole["labels"][-1] = (whole["labels"][-1] + 1) % len(EMOJI_CLASSES)
    assert compare_emoji_arrays(whole, shipped) == ["labels differs"]
