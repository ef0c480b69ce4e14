"""Data loaders: the shipped emoji arrays, the course's format, an image folder; clear errors."""
import numpy as np
import pytest
from PIL import Image

from diffusion_core.data import (EMOJI_CLASSES, load_course_sprites, load_dataset, load_emoji, load_image_folder,
                                 read_emoji_list, EMOJI_TEST)


def test_shipped_emoji_arrays_hold_about_3700_labelled_sprites_in_both_styles():
    data = load_emoji(split="all")
    assert 3500 <= len(data) <= 3900 and data.images.shape[1:] == (32, 32, 3) and data.images.dtype == np.uint8
    assert data.context.shape == (len(data), 10)
    assert set(np.unique(data.labels)) == set(range(len(EMOJI_CLASSES)))
    assert np.allclose(data.context.sum(1), 2.0)  # one class + one style
    assert (data.context[:, 8:].sum(0) > 1500).all()  # noto and openmoji both well represented
    assert len(np.unique(data.images.reshape(len(data), -1), axis=0)) == len(data)  # no exact duplicates
    assert load_emoji(image_size=16, split="all").images.shape[1:] == (16, 16, 3)


def test_held_out_split_is_disjoint_stratified_and_fixed():
    train, held = load_emoji(split="train"), load_emoji(split="held_out")
    assert len(train) + len(held) == len(load_emoji(split="all"))
    assert 0.08 < len(held) / (len(train) + len(held)) < 0.12
    assert set(np.unique(held.labels)) == set(range(8))
    assert np.array_equal(load_emoji(split="held_out").images, held.images)


@pytest.mark.skipif(not EMOJI_TEST.exists(), reason="Debian's unicode-data is not installed")
def test_emoji_list_drops_skin_tones_and_maps_groups_to_the_eight_classes():
    emoji = read_emoji_list()
    assert 1800 <= len(emoji) <= 1950
    assert {cls for _, cls, _ in emoji} == set(EMOJI_CLASSES)
    names = {name: cls for _, cls, name in emoji}
    assert names["grinning face"] == "face" and names["red heart"] == "symbol" and names["pizza"] == "food_drink"


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
    with pytest.raises(ValueError, match="broken.png: unreadable image"):
        load_image_folder(tmp_path)


def test_building_emoji_without_the_system_packages_names_each_missing_one(monkeypatch, tmp_path):
    import diffusion_core.data as data

    monkeypatch.setattr(data, "NOTO_FONT", tmp_path / "NotoColorEmoji.ttf")
    monkeypatch.setattr(data, "EMOJI_TEST", tmp_path / "emoji-test.txt")
    with pytest.raises(RuntimeError) as err:
        data.build_emoji(tmp_path / "out.npz")
    assert "apt-get install fonts-noto-color-emoji" in str(err.value) and "apt-get install unicode-data" in str(err.value)
    assert not (tmp_path / "out.npz").exists()


def _can_build_emoji() -> bool:
    from diffusion_core.data import check_emoji_build_requirements

    try:
        check_emoji_build_requirements()
        return True
    except RuntimeError:
        return False


@pytest.mark.skipif(not _can_build_emoji(), reason="the emoji build needs Debian's fonts-noto-color-emoji, "
                    "unicode-data, libfribidi0 and requirements-data.txt")
def test_build_data_reproduces_the_shipped_arrays(tmp_path):
    from diffusion_core.data import EMOJI_NPZ, build_emoji

    build_emoji(tmp_path / "rebuilt.npz")
    with np.load(tmp_path / "rebuilt.npz") as rebuilt, np.load(EMOJI_NPZ) as shipped:
        for key in ("images32", "images16", "labels", "styles", "names"):
            assert np.array_equal(rebuilt[key], shipped[key]), key
