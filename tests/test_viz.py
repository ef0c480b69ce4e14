"""Pictures: the grid of samples (diffusion_core/viz.py)."""
import numpy as np

from diffusion_core.viz import image_grid


def test_a_grid_upscales_each_picture_and_lays_them_in_rows_with_white_padding():
    """torchvision's make_grid layout, which image_grid replaced: `padding` white pixels around and between
    cells, row by row, the last row left white where pictures run out; one picture comes back unpadded."""
    images = np.stack([np.full((2, 3, 3), 10 * (k + 1), dtype=np.uint8) for k in range(3)])
    images[1, 0, 0] = (1, 2, 3)
    grid = image_grid(images, nrow=2, scale=2, padding=1)
    assert grid.shape == (2 * (4 + 1) + 1, 2 * (6 + 1) + 1, 3) and grid.dtype == np.uint8
    cells = {(0, 0): 0, (0, 1): 1, (1, 0): 2}
    for (row, col), k in cells.items():
        top, left = 1 + row * 5, 1 + col * 7
        assert np.array_equal(grid[top:top + 4, left:left + 6], images[k].repeat(2, 0).repeat(2, 1))
    assert grid[6:10, 8:14].min() == 255  # no fourth picture
    assert (grid[[0, 5, 10]] == 255).all() and (grid[:, [0, 7, 14]] == 255).all()  # the padding lines
    assert np.array_equal(image_grid(images[:1], scale=3), images[0].repeat(3, 0).repeat(3, 1))
    assert image_grid(images, nrow=8, scale=1, padding=2).shape == (2 + 2 + 2, 3 * (3 + 2) + 2, 3)  # one row of 3
