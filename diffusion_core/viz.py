"""Pictures of samples and trajectories: grids (PNG) and animations (GIF, MP4)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, nrow: int = 8, scale: int = 4, padding: int = 2) -> np.ndarray:
    """uint8 (N, H, W, 3) -> one uint8 grid image, upscaled ``scale``x with nearest neighbour so
    sprites stay crisp."""
    x = upscale(np.asarray(images), scale)
    if len(x) == 1:  # one picture: itself, unpadded (as torchvision's make_grid gave it)
        return np.ascontiguousarray(x[0])
    n, h, w, c = x.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    # torchvision's make_grid layout (without importing torchvision, seconds at every start): each cell is
    # the picture and `padding` pixels of pad colour above and to its left, one more padding at the bottom/right
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), 255, dtype=x.dtype)
    for k in range(n):
        top, left = (k // cols) * (h + padding) + padding, (k % cols) * (w + padding) + padding
        grid[top:top + h, left:left + w] = x[k]
    return grid


def upscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscale of uint8 (..., H, W, 3) images."""
    return images.repeat(scale, axis=-3).repeat(scale, axis=-2)


def save_atomic(image: Image.Image, path: str | os.PathLike, **save_kwargs) -> Path:
    """Save a PIL image to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format=save_kwargs.pop("format", None) or Image.registered_extensions()[path.suffix.lower()], **save_kwargs)
    os.replace(tmp, path)
    return path


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: int = 8, scale: int = 4) -> Path:
    return save_atomic(Image.fromarray(image_grid(images, nrow, scale)), path)


def trajectory_frames(x_t: list[np.ndarray], x0_pred: list[np.ndarray], final: np.ndarray | None = None,
                      scale: int = 4, nrow: int = 8) -> list[np.ndarray]:
    """One frame per step: the grid of x_t beside the grid of the predicted x_0 (then the result)."""
    frames = []
    for noisy, predicted in zip(x_t, x0_pred):
        left, right = image_grid(noisy, nrow, scale), image_grid(predicted, nrow, scale)
        gap = np.full((left.shape[0], 8, 3), 255, dtype=np.uint8)
        frames.append(np.concatenate([left, gap, right], axis=1))
    if final is not None:
        grid = image_grid(final, nrow, scale)
        gap = np.full((grid.shape[0], 8, 3), 255, dtype=np.uint8)
        frames.append(np.concatenate([grid, gap, grid], axis=1))
    return frames


def save_gif(frames: list[np.ndarray], path: str | os.PathLike, seconds: float = 4.0, hold_last: float = 1.5) -> Path:
    """An animated GIF lasting about ``seconds`` (the last frame held ``hold_last`` s longer), looping."""
    per_frame = max(int(1000 * seconds / max(len(frames), 1)), 20)
    durations = [per_frame] * (len(frames) - 1) + [int(1000 * hold_last)]
    images = [Image.fromarray(f) for f in frames]
    save_atomic(images[0], path, save_all=True, append_images=images[1:], duration=durations, loop=0,
                format="GIF", optimize=False)
    return Path(path)


def save_mp4(frames: list[np.ndarray], path: str | os.PathLike, fps: int = 10) -> Path:
    """An H.264 MP4 (yuv420p, plays in browsers) written with PyAV; sizes padded to even numbers."""
    import av

    h, w = frames[0].shape[:2]
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("h264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        for frame in frames:
            padded = np.full((stream.height, stream.width, 3), 255, dtype=np.uint8)
            padded[:h, :w] = frame
            container.mux(stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")))
        container.mux(stream.encode())  # flush
    os.replace(tmp, path)
    return path


def labelled_blocks(blocks: list[np.ndarray], titles: list[str], gap: int = 16, title_height: int = 18) -> np.ndarray:
    """Grids side by side on white, each with its title above it (Pillow's default font)."""
    from PIL import ImageDraw

    height = max(b.shape[0] for b in blocks) + title_height
    width = sum(b.shape[1] for b in blocks) + gap * (len(blocks) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw, x = ImageDraw.Draw(canvas), 0
    for block, title in zip(blocks, titles):
        canvas.paste(Image.fromarray(block), (x, title_height))
        draw.text((x + 2, 3), title, fill=(0, 0, 0))
        x += block.shape[1] + gap
    return np.asarray(canvas)


def prompt_grid(images: np.ndarray, prompts: list[str], per_row: int = 4, scale: int = 3) -> np.ndarray:
    """Images drawn for prompts cycled over them (image i had prompts[i % len]): one titled block per
    prompt, ``per_row`` blocks to a row."""
    blocks = [image_grid(images[k::len(prompts)], nrow=4, scale=scale) for k in range(len(prompts))]
    rows = [labelled_blocks(blocks[i:i + per_row], prompts[i:i + per_row]) for i in range(0, len(blocks), per_row)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 8), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(rows)


def class_style_grid(images: np.ndarray, labels: np.ndarray, styles: np.ndarray, class_names, style_names,
                     per_cell: int = 4, seed: int = 0, scale: int = 2) -> np.ndarray:
    """Real sprites by style (blocks, left to right) and class (rows): ``per_cell`` random ones each."""
    rng = np.random.default_rng(seed)
    blocks = []
    for s in range(len(style_names)):
        rows = []
        for c in range(len(class_names)):
            index = np.flatnonzero((labels == c) & (styles == s))
            pick = rng.choice(index, size=min(per_cell, len(index)), replace=False)
            row = np.full((per_cell, *images.shape[1:]), 255, dtype=np.uint8)
            row[:len(pick)] = images[pick]
            rows.append(row)
        blocks.append(image_grid(np.concatenate(rows), nrow=per_cell, scale=scale))
    return labelled_blocks(blocks, list(style_names))


def paths_grid(paths: dict[str, list[np.ndarray]], column_titles: list[str], scale: int = 3, pad: int = 2) -> np.ndarray:
    """Two (or more) denoising paths over time, aligned so one sees where they part: for each image,
    one row per path (rows interleaved, titled with the path's name), one column per recorded step
    (titled, e.g. with its t). ``paths[name][k]`` is uint8 (n, H, W, 3), the path's images at column k."""
    from PIL import ImageDraw

    names = list(paths)
    n, h, w = paths[names[0]][0].shape[:3]
    cell_h, cell_w, left, top = h * scale + pad, w * scale + pad, 26, 16
    canvas = Image.new("RGB", (left + cell_w * len(column_titles), top + cell_h * n * len(names) + pad * n),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, title in enumerate(column_titles):
        draw.text((left + k * cell_w + 2, 2), title, fill=(0, 0, 0))
    for i in range(n):
        for j, name in enumerate(names):
            y = top + (i * len(names) + j) * cell_h + i * pad
            draw.text((4, y + cell_h // 2 - 6), name, fill=(0, 0, 0))
            for k, images in enumerate(paths[name]):
                canvas.paste(Image.fromarray(upscale(images[i:i + 1], scale)[0]), (left + k * cell_w, y))
    return np.asarray(canvas)


def path_difference(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """Per step, the mean absolute difference (0..1) between two paths' pictures (uint8 (n, H, W, 3) each)."""
    return np.array([np.abs(x.astype(np.float32) - y.astype(np.float32)).mean() / 255 for x, y in zip(a, b)])


def parting_step(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    """The first step from which on each path's picture (e.g. its predicted x_0) is nearer its own
    final picture than the other path's final picture: where the two pictures have parted."""
    own = path_difference(a, [a[-1]] * len(a)) + path_difference(b, [b[-1]] * len(b))
    other = path_difference(a, [b[-1]] * len(a)) + path_difference(b, [a[-1]] * len(b))
    undecided = np.flatnonzero(own >= other)
    return int(undecided[-1]) + 1 if len(undecided) else 0
