"""Files: frames as PNG, side-by-side strips and animated GIFs; figures as PNG.

Every file is written atomically (:func:`xembed._util.atomic_write`: a
temporary sibling renamed into place), so a failed write never leaves a
half-written picture behind; folders are created.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xembed._util import atomic_write
from xembed.render._common import iio

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["save_figure", "save_gif", "save_png", "save_strip"]


def _as_rgb8(frame: Any, i: int) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(
            f"frame {i} has shape {arr.shape}; expected (height, width, 3) RGB or "
            "(height, width, 4) RGBA, as render() returns"
        )
    if arr.dtype != np.uint8:
        raise ValueError(
            f"frame {i} is {arr.dtype}; expected uint8 pictures (0-255), as render() returns"
        )
    return arr[..., :3]


def _frame_list(frames: Iterable[Any]) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = [frames]  # one frame given on its own
    out = [_as_rgb8(f, i) for i, f in enumerate(frames)]
    if not out:
        raise ValueError("no frames to write; pass a non-empty list of frames from render()")
    return out


def _pad(img: np.ndarray, height: int, width: int, fill: tuple[int, int, int]) -> np.ndarray:
    if img.shape[:2] == (height, width):
        return img
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = np.asarray(fill, dtype=np.uint8)
    out[: img.shape[0], : img.shape[1]] = img
    return out


def _write_image(
    path: str | os.PathLike[str], image: np.ndarray, extension: str, **options: Any
) -> Path:
    """Write ``image`` (one picture or a stack of GIF frames) with imageio, atomically."""
    imageio = iio()  # before any file is touched: a missing imageio leaves no folder behind
    return atomic_write(
        path, lambda tmp: imageio.imwrite(tmp, image, extension=extension, **options)
    )


def save_png(frame: Any, path: str | os.PathLike[str]) -> Path:
    """Write one frame as a PNG (atomically; folders are created).

    Examples
    --------
    >>> import os, tempfile
    >>> import imageio.v3 as iio
    >>> from xembed.testing import make_cube
    >>> from xembed.render import render
    >>> frame = render(make_cube(shape=(8, 8)), 2020, dimensions=40)
    >>> iio.imread(save_png(frame, os.path.join(tempfile.mkdtemp(), "f.png"))).shape
    (40, 40, 3)
    """
    return _write_image(path, _frame_list([frame])[0], ".png")


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: float | None = None) -> Path:
    """Write a figure (e.g. from :func:`plot_change`) as a PNG, atomically.

    Examples
    --------
    >>> import os, tempfile
    >>> from xembed.testing import make_cube
    >>> from xembed.ops import similarity_matrix
    >>> from xembed.render import plot_similarity_matrix
    >>> fig = plot_similarity_matrix(similarity_matrix(make_cube(shape=(8, 8))))
    >>> save_figure(fig, os.path.join(tempfile.mkdtemp(), "sim.png")).suffix
    '.png'
    """
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi or fig.dpi))


def save_strip(
    frames: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    gap: int = 8,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Path:
    """Write frames side by side into one PNG.

    Parameters
    ----------
    frames : sequence of (height, width, 3 or 4) uint8 arrays
        E.g. from :func:`frames` (already labelled). Frames of different
        heights are aligned at the top; alpha channels are dropped.
    path : str or path
        The PNG file to write (folders are created; written atomically).
    gap : int, default 8
        Pixels between frames.
    background : RGB, default white
        Colour of the gaps and of padding.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import os, tempfile
    >>> import imageio.v3 as iio
    >>> from xembed.testing import make_cube
    >>> from xembed.render import frames
    >>> out = frames(make_cube(years=(2020, 2021), shape=(8, 8)), dimensions=40)
    >>> path = save_strip(out, os.path.join(tempfile.mkdtemp(), "strip.png"))
    >>> iio.imread(path).shape  # 2 x 40 px + 8 px gap
    (40, 88, 3)
    """
    if gap < 0:
        raise ValueError(f"gap must be >= 0 pixels, got {gap}")
    imgs = _frame_list(frames)
    height = max(f.shape[0] for f in imgs)
    parts: list[np.ndarray] = []
    for i, img in enumerate(imgs):
        if i:
            parts.append(_pad(np.empty((0, gap, 3), np.uint8), height, gap, background))
        parts.append(_pad(img, height, img.shape[1], background))
    return _write_image(path, np.concatenate(parts, axis=1), ".png")


def save_gif(
    frames: Sequence[Any],
    path: str | os.PathLike[str],
    duration_ms: float = 700,
    loop: int = 0,
) -> Path:
    """Write frames as an animated GIF.

    Parameters
    ----------
    frames : sequence of (height, width, 3 or 4) uint8 arrays
        E.g. from :func:`frames`; smaller frames are padded (white, at the
        bottom and right) to the largest.
    path : str or path
        The GIF file to write (folders are created; written atomically).
    duration_ms : float, default 700
        Display time of each frame in milliseconds.
    loop : int, default 0
        Times to play; 0 loops forever.

    Returns
    -------
    pathlib.Path
        ``path``.

    Notes
    -----
    GIF stores at most 256 colours per frame: Pillow picks an adaptive
    palette per frame, so colours are close but not exact (use
    :func:`save_strip` for exact pixels).

    Examples
    --------
    >>> import os, tempfile
    >>> import imageio.v3 as iio
    >>> from xembed.testing import make_cube
    >>> from xembed.render import frames
    >>> out = frames(make_cube(years=(2020, 2021, 2022), shape=(8, 8)), dimensions=40)
    >>> path = save_gif(out, os.path.join(tempfile.mkdtemp(), "years.gif"))
    >>> iio.imread(path, index=None).shape[:3]
    (3, 40, 40)
    """
    if duration_ms <= 0:
        raise ValueError(f"duration_ms must be > 0, got {duration_ms}")
    imgs = _frame_list(frames)
    height = max(f.shape[0] for f in imgs)
    width = max(f.shape[1] for f in imgs)
    stack = np.stack([_pad(f, height, width, (255, 255, 255)) for f in imgs])
    return _write_image(path, stack, ".gif", duration=float(duration_ms), loop=int(loop))
