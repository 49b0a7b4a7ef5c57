"""Pictures onto the web map: UTM pixels to Web Mercator, coloured, as PNG data URIs.

Leaflet stretches an image overlay linearly between two lat/lon corners in
its own projection, Web Mercator (EPSG:3857). A cube's UTM pixels are
therefore warped (nearest neighbour, so every embedding pixel stays one
colour) onto a regular EPSG:3857 grid, whose corners, back in lat/lon, are
the overlay's bounds. The grid is finer than the cube's pixels (up to 8
times) so their slightly rotated edges stay straight on screen.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine

from xembed._util import transformer

__all__ = ["WebImage", "data_uri", "hex_colours", "to_web_mercator"]

WEB_MERCATOR = "EPSG:3857"
#: The warped picture's longest side is raised to about this many pixels (by whole factors).
TARGET_PX = 400
MAX_UPSAMPLE = 8


@dataclass(frozen=True)
class WebImage:
    """RGBA pictures on one Web Mercator grid.

    ``rgba`` is ``(n, height, width, 4)`` uint8, row 0 north; ``transform``
    maps its pixel corners to EPSG:3857 metres; ``bounds`` is the overlay's
    ``[[south, west], [north, east]]`` in degrees.
    """

    rgba: np.ndarray
    transform: Affine
    bounds: list[list[float]]


def _grid(
    src_crs: Any, width: int, height: int, extent: tuple[float, ...]
) -> tuple[Affine, int, int]:
    from rasterio.warp import calculate_default_transform

    left, right, bottom, top = extent
    transform, w, h = calculate_default_transform(
        src_crs, WEB_MERCATOR, width, height, left=left, bottom=bottom, right=right, top=top
    )
    factor = int(min(MAX_UPSAMPLE, max(1, math.ceil(TARGET_PX / max(w, h)))))
    return transform * Affine.scale(1 / factor), int(w) * factor, int(h) * factor


def to_web_mercator(rgba: np.ndarray, crs: Any, extent: tuple[float, ...]) -> WebImage:
    """Warp north-up RGBA pictures onto a Web Mercator grid (nearest neighbour).

    Parameters
    ----------
    rgba : numpy.ndarray
        ``(n, y, x, 4)`` uint8, row 0 north, column 0 west.
    crs : anything rasterio takes
        Their CRS.
    extent : (left, right, bottom, top)
        Their outer pixel edges in ``crs``.

    Examples
    --------
    One UTM pixel of 10 m, near Campinas:

    >>> img = np.full((1, 1, 1, 4), 255, np.uint8)
    >>> web = to_web_mercator(img, "EPSG:32723", (290000.0, 290010.0, 7470000.0, 7470010.0))
    >>> web.rgba.shape[0], web.rgba.dtype, web.rgba[..., 3].max()
    (1, dtype('uint8'), np.uint8(255))
    >>> (south, west), (north, east) = web.bounds
    >>> round(west, 4), round(north, 4)
    (-47.0468, -22.8646)
    """
    from rasterio.warp import Resampling, reproject

    n, height, width, _ = rgba.shape
    left, right, bottom, top = extent
    src_transform = Affine((right - left) / width, 0.0, left, 0.0, -(top - bottom) / height, top)
    dst_transform, w, h = _grid(crs, width, height, extent)
    src = np.ascontiguousarray(rgba.transpose(0, 3, 1, 2).reshape(n * 4, height, width))
    dst = np.zeros((n * 4, h, w), dtype=np.uint8)  # outside the cube: transparent
    reproject(
        src,
        dst,
        src_transform=src_transform,
        src_crs=crs,
        dst_transform=dst_transform,
        dst_crs=WEB_MERCATOR,
        resampling=Resampling.nearest,
    )
    to_ll = transformer(WEB_MERCATOR, "EPSG:4326")
    west, north = to_ll.transform(*(dst_transform * (0, 0)))
    east, south = to_ll.transform(*(dst_transform * (w, h)))
    out = dst.reshape(n, 4, h, w).transpose(0, 2, 3, 1)
    return WebImage(np.ascontiguousarray(out), dst_transform, [[south, west], [north, east]])


def data_uri(rgba: np.ndarray) -> str:
    """One ``(y, x, 4)`` uint8 picture as a PNG ``data:`` URI.

    >>> data_uri(np.zeros((2, 2, 4), np.uint8))[:22]
    'data:image/png;base64,'
    """
    from PIL import Image

    buffer = io.BytesIO()
    # zlib level 6: optimize=True saved ~4 % of the bytes and took ~3 times as long
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buffer, format="PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def hex_colours(colours: np.ndarray) -> list[str]:
    """``(n, 3 or 4)`` floats in 0..1 as ``#rrggbb`` strings.

    >>> hex_colours(np.array([[1.0, 0.5, 0.0]]))
    ['#ff8000']
    """
    rgb = np.clip(np.round(np.asarray(colours)[:, :3] * 255), 0, 255).astype(int)
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb]
