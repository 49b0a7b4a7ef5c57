"""Writing the public embedding mirror's exact on-disk format.

The Cloud-Optimized GeoTIFF mirror of ``GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL``
(Source Cooperative ``tge-labs/aef/v1/annual``; Google Cloud Storage
``alphaearth_foundations/satellite_embedding/v1/annual``) stores

- one file per quarter of an Earth Engine image, at
  ``{year}/{zone}/{eeImageId}-{yOff:010d}-{xOff:010d}.tiff`` (offsets in pixels
  from the image's north-west corner, as in Earth Engine's export names);
- int8, 64 bands named ``A00``..``A63``, nodata -128 (in all bands at once),
  ZSTD, tiled, band-separate planes, overviews down to 1 x 1 whose pixels are
  the normalised mean of the full-resolution vectors under them;
- **bottom-up**: row 0 is the southern edge and the geotransform's y pixel
  size is positive (``Affine(res, 0, west, 0, +res, south)``);
- an index ``aef_index.parquet`` (GeoParquet) and ``aef_index.csv`` at the
  root, one row per file, with WGS84 footprints clipped to the file's UTM zone.

This module writes that format (:func:`write_tile`, :func:`write_index`) so
that the sample data (:mod:`xembed.sources.sample`) and the tests exercise the
reader that runs on the real mirror. :func:`cog_layout_problems` checks a
file's TIFF structure the way GDAL's COG validator does.

GDAL notes (3.10): the ``COG`` driver accepts a positive y pixel size but
silently ignores ``INTERLEAVE=BAND`` (its files come out pixel-interleaved),
so files are written with the ``GTiff`` driver and ``COPY_SRC_OVERVIEWS=YES``
from a VRT that carries the overviews. That gives the COG layout (IFDs first,
then overview data smallest first, then the full resolution), but without
GDAL's optional "ghost" header (``LAYOUT=COG`` in the ``IMAGE_STRUCTURE``
metadata), which GDAL writes only for pixel-interleaved or single-band files.
A positive y pixel size is stored in the GeoTIFF ``ModelTransformation`` tag
(not ``ModelPixelScale``, whose negative y scale GDAL would ignore), and GDAL
and rasterio read it back as ``Affine(res, 0, west, 0, res, south)``. Mind
that rasterio's ``dataset.bounds`` of such a file is ``(west, north, east,
south)``: "bottom" and "top" come out swapped.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xembed._util import atomic_write, transformer
from xembed.schema import BANDS, DEQUANTIZE_TABLE, NODATA, quantize
from xembed.sources import common

__all__ = [
    "INDEX_COLUMNS",
    "MIRROR_BLOCKSIZE",
    "MIRROR_FILE_SIZE",
    "cog_layout_problems",
    "ee_image_id",
    "index_record",
    "overview_levels",
    "tile_path",
    "utm_zone_crs",
    "wgs84_footprint",
    "write_index",
    "write_tile",
    "zone_longitudes",
]

#: Columns of the mirror's index, in order: those the reader needs, then the footprint.
INDEX_COLUMNS: tuple[str, ...] = (*common.INDEX_COLUMNS, "geometry")
#: Width and height of the real mirror's files in pixels (a quarter EE image).
MIRROR_FILE_SIZE = 8192
#: The real mirror's internal tile size.
MIRROR_BLOCKSIZE = 1024

_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_ID_LENGTH = 17


# --------------------------------------------------------------------------- names


def ee_image_id(*key: object) -> str:
    """A deterministic 17-character lowercase id, like Earth Engine's image ids.

    Examples
    --------
    >>> ee_image_id("22S", 2024, 0, 0)
    'i0hp64vpebeveakis'
    >>> len(ee_image_id("anything")), ee_image_id("a") == ee_image_id("a")
    (17, True)
    """
    digest = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    number = int.from_bytes(digest, "big")
    chars = []
    for _ in range(_ID_LENGTH):
        number, digit = divmod(number, len(_ID_ALPHABET))
        chars.append(_ID_ALPHABET[digit])
    return "".join(chars)


def tile_path(year: int, zone: str, image_id: str, y_off: int, x_off: int) -> str:
    """A file's path relative to the mirror root.

    ``y_off``/``x_off`` are the file's pixel offsets within its Earth Engine
    image, counted from the image's north-west corner.

    Examples
    --------
    >>> tile_path(2024, "13N", "xjejfvrbm1fbu1ecw", 0, 8192)
    '2024/13N/xjejfvrbm1fbu1ecw-0000000000-0000008192.tiff'
    """
    return f"{int(year)}/{_check_zone(zone)}/{image_id}-{int(y_off):010d}-{int(x_off):010d}.tiff"


def _check_zone(zone: str) -> str:
    zone = str(zone).upper()
    number, hemisphere = zone[:-1], zone[-1:]
    if not number.isdigit() or not 1 <= int(number) <= 60 or hemisphere not in ("N", "S"):
        raise ValueError(f"UTM zone {zone!r} is not like '22S' or '13N' (1..60 then N or S)")
    return f"{int(number)}{hemisphere}"


def utm_zone_crs(zone: str) -> str:
    """The WGS84 UTM CRS of a zone name.

    Examples
    --------
    >>> utm_zone_crs("22S"), utm_zone_crs("10N")
    ('EPSG:32722', 'EPSG:32610')
    """
    zone = _check_zone(zone)
    return f"EPSG:{(32600 if zone[-1] == 'N' else 32700) + int(zone[:-1])}"


def zone_longitudes(zone: str) -> tuple[float, float]:
    """The western and eastern longitude of a UTM zone.

    Examples
    --------
    >>> zone_longitudes("22S"), zone_longitudes("23S")
    ((-54.0, -48.0), (-48.0, -42.0))
    """
    number = int(_check_zone(zone)[:-1])
    west = -180.0 + 6.0 * (number - 1)
    return west, west + 6.0


# --------------------------------------------------------------------------- files


def overview_levels(height: int, width: int) -> list[tuple[int, int]]:
    """Overview sizes ``(h, w)`` of the mirror's pyramid: halving down to 1 x 1.

    Sizes round up, as GDAL's do (``ceil(size / 2**k)``).

    Examples
    --------
    >>> overview_levels(192, 192)
    [(96, 96), (48, 48), (24, 24), (12, 12), (6, 6), (3, 3), (2, 2), (1, 1)]
    >>> overview_levels(1, 1)
    []
    """
    levels = []
    factor = 2
    while (height, width) != (1, 1):
        levels.append((-(-height // factor), -(-width // factor)))
        if levels[-1] == (1, 1):
            break
        factor *= 2
    return levels


def _overviews(stored: np.ndarray) -> list[np.ndarray]:
    """The overview arrays of a ``(bands, h, w)`` int8 array, in its row order.

    Each overview pixel is the mean of the valid full-resolution vectors under
    it (GDAL's pixel footprints: source rows ``floor(i * H / h)`` up to the
    next one), normalised to unit length and quantised; -128 where none is valid.
    """
    _, height, width = stored.shape
    valid = (stored != NODATA).all(axis=0)
    values = np.nan_to_num(DEQUANTIZE_TABLE[stored.view(np.uint8)], copy=False)  # nodata: 0
    values[:, ~valid] = 0.0
    # (row starts, col starts, sums, counts) of the levels computed so far: each
    # level is summed from the smallest earlier one whose pixel edges it shares
    computed = [(np.arange(height), np.arange(width), values, valid.astype(np.float32))]
    out = []
    for h, w in overview_levels(height, width):
        rows = np.floor(np.arange(h) * height / h).astype(np.intp)
        cols = np.floor(np.arange(w) * width / w).astype(np.intp)
        prev_sums, prev_count, r, c = _finest_parent(computed, rows, cols)
        if (
            (r == 2 * np.arange(h)).all()
            and (c == 2 * np.arange(w)).all()
            and (prev_count.shape == (2 * h, 2 * w))
        ):  # the common case: plain 2 x 2 blocks
            sums = prev_sums[:, 0::2, 0::2] + prev_sums[:, 1::2, 0::2]
            sums += prev_sums[:, 0::2, 1::2]
            sums += prev_sums[:, 1::2, 1::2]
            count = prev_count[0::2, 0::2] + prev_count[1::2, 0::2]
            count += prev_count[0::2, 1::2] + prev_count[1::2, 1::2]
        else:
            sums = np.add.reduceat(np.add.reduceat(prev_sums, r, axis=1), c, axis=2)
            count = np.add.reduceat(np.add.reduceat(prev_count, r, axis=0), c, axis=1)
        computed.append((rows, cols, sums, count))
        norm = np.sqrt(np.einsum("bij,bij->ij", sums, sums))
        ok = (count > 0) & (norm > 0)
        unit = np.divide(sums, norm, out=np.zeros_like(sums), where=ok[None])
        level = quantize(unit)
        level[:, ~ok] = NODATA
        out.append(level)
    return out


def _finest_parent(computed: list, rows: np.ndarray, cols: np.ndarray) -> tuple:
    """The smallest computed level whose pixel edges include ``rows``/``cols``.

    Returns its sums and counts and the positions of ``rows``/``cols`` in it.
    The full resolution (first entry) always qualifies.
    """
    for prev_rows, prev_cols, prev_sums, prev_count in reversed(computed):
        r = np.searchsorted(prev_rows, rows)
        c = np.searchsorted(prev_cols, cols)
        if (
            r[-1] < len(prev_rows)
            and c[-1] < len(prev_cols)
            and (prev_rows[r] == rows).all()
            and (prev_cols[c] == cols).all()
        ):
            return prev_sums, prev_count, r, c
    raise AssertionError("unreachable: the full resolution contains every edge")


def _gtiff_in_memory(array: np.ndarray, crs: Any, transform: Any) -> Any:
    from rasterio.io import MemoryFile

    memfile = MemoryFile()
    with memfile.open(
        driver="GTiff",
        dtype="int8",
        count=array.shape[0],
        height=array.shape[1],
        width=array.shape[2],
        crs=crs,
        transform=transform,
        nodata=NODATA,
        interleave="band",  # so that GDAL's band-by-band copy reads each value once
    ) as dst:
        dst.write(array)
    return memfile


def _vrt_xml(base: str, overviews: list[str], shape: tuple[int, int, int], crs: Any, gt) -> str:
    count, height, width = shape
    bands = []
    for b in range(1, count + 1):
        ovr = "".join(
            f'<Overview><SourceFilename relativeToVRT="0">{html.escape(name)}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand></Overview>"
            for name in overviews
        )
        bands.append(
            f'<VRTRasterBand dataType="Int8" band="{b}"><NoDataValue>{NODATA}</NoDataValue>'
            f"<Description>{BANDS[b - 1]}</Description>"
            f'<SimpleSource><SourceFilename relativeToVRT="0">{html.escape(base)}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand></SimpleSource>{ovr}</VRTRasterBand>"
        )
    geotransform = ", ".join(repr(float(v)) for v in gt)
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
        f"<SRS>{html.escape(crs.to_wkt())}</SRS><GeoTransform>{geotransform}</GeoTransform>"
        f"{''.join(bands)}</VRTDataset>"
    )


def write_tile(
    path: str | os.PathLike[str],
    q: np.ndarray,
    *,
    crs: Any,
    west: float,
    north: float,
    res: float = 10.0,
    blocksize: int = 256,
) -> Path:
    """Write one mirror file: a bottom-up, band-separate, ZSTD Cloud-Optimized GeoTIFF.

    Parameters
    ----------
    path : path-like
        Where to write (parent folders are created). The file is written to a
        temporary name in the same folder and renamed into place, so readers
        never see a partial file.
    q : numpy.ndarray
        int8 array ``(64, h, w)`` in **north-up** row order (row 0 = north),
        -128 for nodata (set all bands of a pixel at once).
    crs : str or CRS
        The file's UTM CRS, e.g. ``"EPSG:32722"``.
    west, north : float
        Coordinates of the north-west corner, in ``crs`` units (metres).
    res : float, default 10
        Pixel size in metres.
    blocksize : int, default 256
        Internal tile size, a multiple of 16 (the real mirror uses 1024).

    Returns
    -------
    pathlib.Path
        The written file. Reading it back gives the rows flipped (row 0 =
        south) and the transform ``Affine(res, 0, west, 0, res, south)``.

    Notes
    -----
    Overviews halve down to 1 x 1; each overview pixel is the normalised mean
    of the valid full-resolution vectors under it, as in the mirror. They are
    tiled like the full resolution when ``blocksize`` is a power of two from
    64 to 4096 (GDAL's limits for overview tiles), else 128 x 128. The whole
    array and a float32 copy are held in memory: meant for test- and
    sample-sized files, not 8192 x 8192 ones. ZSTD level 1 compresses these
    int8 planes as well as GDAL's default level 9, several times faster.

    Examples
    --------
    >>> import tempfile, rasterio
    >>> q = np.zeros((64, 4, 3), dtype=np.int8)
    >>> q[0, 0, :] = 127  # the northern row
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = write_tile(f"{tmp}/t.tiff", q, crs="EPSG:32722", west=500000.0,
    ...                       north=7500040.0, blocksize=16)
    ...     with rasterio.open(path) as src:
    ...         print(src.transform.e, src.transform.f, src.read(1)[:, 0])
    10.0 7500000.0 [  0   0   0 127]
    """
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.shutil import copy as rio_copy

    q = np.asarray(q)
    if q.dtype != np.int8 or q.ndim != 3 or q.shape[0] != len(BANDS) or 0 in q.shape:
        raise ValueError(
            f"q must be an int8 array of shape ({len(BANDS)}, h, w), got "
            f"{q.dtype} {q.shape}; quantise float embeddings with xembed.schema.quantize"
        )
    if blocksize <= 0 or blocksize % 16:
        raise ValueError(
            f"blocksize must be a positive multiple of 16 (TIFF tiles), got {blocksize}"
        )
    if not res > 0:
        raise ValueError(f"res must be a positive pixel size in metres, got {res}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    crs = CRS.from_user_input(crs)
    _, height, width = q.shape
    south = float(north) - res * height
    stored = np.ascontiguousarray(q[:, ::-1, :])  # bottom-up: row 0 is the south
    transform = Affine(res, 0.0, float(west), 0.0, res, south)
    levels = _overviews(stored)

    def write(tmp: Path) -> None:
        # GDAL copies the overviews of its source (COPY_SRC_OVERVIEWS): a VRT
        # over in-memory GeoTIFFs of the full resolution and of each level
        with contextlib.ExitStack() as stack:
            memfiles = [stack.enter_context(_gtiff_in_memory(stored, crs, transform))]
            for level in levels:
                _, h, w = level.shape
                ovr = Affine(res * width / w, 0.0, float(west), 0.0, res * height / h, south)
                memfiles.append(stack.enter_context(_gtiff_in_memory(level, crs, ovr)))
            vrt = _vrt_xml(
                memfiles[0].name,
                [m.name for m in memfiles[1:]],
                stored.shape,
                crs,
                transform.to_gdal(),
            )
            env = {}
            if 64 <= blocksize <= 4096 and blocksize & (blocksize - 1) == 0:
                env["GDAL_TIFF_OVR_BLOCKSIZE"] = str(blocksize)  # overviews tiled alike
            with rasterio.Env(**env), rasterio.open(vrt) as src:
                rio_copy(
                    src,
                    tmp,
                    driver="GTiff",
                    TILED="YES",
                    BLOCKXSIZE=blocksize,
                    BLOCKYSIZE=blocksize,
                    COMPRESS="ZSTD",
                    ZSTD_LEVEL=1,  # as small as GDAL's default 9 here, and 4x faster
                    INTERLEAVE="BAND",
                    COPY_SRC_OVERVIEWS="YES",
                    BIGTIFF="IF_SAFER",
                )

    atomic_write(path, write)
    return path


# --------------------------------------------------------------------------- index


def wgs84_footprint(
    crs: Any, west: float, south: float, east: float, north: float, zone: str | None = None
) -> Any:
    """A file's WGS84 footprint polygon, clipped to its UTM zone's longitudes.

    The UTM rectangle is densified (its edges are curves in lon/lat).

    Examples
    --------
    >>> fp = wgs84_footprint("EPSG:32722", 807000, 7495000, 810000, 7498000, "22S")
    >>> round(fp.bounds[2], 6)
    -48.0
    """
    import shapely

    n = 4
    t = np.linspace(0.0, 1.0, n + 1)[:-1]
    dx, dy = east - west, north - south
    xs = np.concatenate([west + dx * t, np.full(n, east), east - dx * t, np.full(n, west)])
    ys = np.concatenate([np.full(n, south), south + dy * t, np.full(n, north), north - dy * t])
    lon, lat = transformer(str(crs), "EPSG:4326").transform(xs, ys)
    polygon = shapely.Polygon(np.column_stack([lon, lat]))
    if zone is not None:
        lon_w, lon_e = zone_longitudes(zone)
        polygon = polygon.intersection(shapely.box(lon_w, -90.0, lon_e, 90.0))
    return shapely.normalize(polygon)


def index_record(
    path: str,
    *,
    crs: Any,
    year: int,
    utm_zone: str,
    west: float,
    south: float,
    east: float,
    north: float,
) -> dict[str, Any]:
    """One index row (a dict with :data:`INDEX_COLUMNS`) for a file.

    ``path`` is relative to the mirror root; the bounds are the file's UTM
    bounds. The WGS84 footprint and bounds are derived, clipped to the zone.
    """
    zone = _check_zone(utm_zone)
    footprint = wgs84_footprint(crs, west, south, east, north, zone)
    lon_w, lat_s, lon_e, lat_n = footprint.bounds
    return {
        "path": str(path).replace(os.sep, "/"),
        "crs": str(crs),
        "year": int(year),
        "utm_zone": zone,
        "utm_west": float(west),
        "utm_south": float(south),
        "utm_east": float(east),
        "utm_north": float(north),
        "wgs84_west": lon_w,
        "wgs84_south": lat_s,
        "wgs84_east": lon_e,
        "wgs84_north": lat_n,
        "geometry": footprint,
    }


def write_index(root: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``{root}/aef_index.parquet`` (GeoParquet) and ``{root}/aef_index.csv``.

    Parameters
    ----------
    root : path-like
        The mirror root.
    records : iterable of mappings
        One per file, with ``path`` (relative to ``root``), ``crs``, ``year``,
        ``utm_zone`` and the ``utm_west/south/east/north`` bounds; the WGS84
        bounds and ``geometry`` (a shapely footprint) are derived with
        :func:`index_record` when missing.

    Returns
    -------
    pathlib.Path
        The parquet file. Rows are sorted by year, zone and path; the CSV holds
        the same rows with the geometry as WKT. Both are written atomically.
    """
    import geopandas as gpd

    rows = []
    for record in records:
        row = dict(record)
        if "geometry" not in row or any(f"wgs84_{s}" not in row for s in _SIDES):
            row = index_record(
                row["path"],
                crs=row["crs"],
                year=row["year"],
                utm_zone=row["utm_zone"],
                **{side: row[f"utm_{side}"] for side in _SIDES},
            )
        missing = [c for c in INDEX_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"index record for {row.get('path')!r} lacks {missing}")
        rows.append({c: row[c] for c in INDEX_COLUMNS})
    if not rows:
        raise ValueError("no records: an index needs at least one file")
    rows.sort(key=lambda r: (r["year"], r["utm_zone"], r["path"]))
    frame = gpd.GeoDataFrame(rows, columns=list(INDEX_COLUMNS), geometry="geometry", crs=4326)
    frame["year"] = frame["year"].astype("int64")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    parquet = root / "aef_index.parquet"
    atomic_write(parquet, lambda tmp: frame.to_parquet(tmp, index=False))
    table = frame.to_wkt()
    atomic_write(root / "aef_index.csv", lambda tmp: table.to_csv(tmp, index=False))
    return parquet


_SIDES = ("west", "south", "east", "north")


# --------------------------------------------------------------------------- validation

_TIFF_TYPES = {1: "B", 2: "c", 3: "H", 4: "I", 6: "b", 7: "B", 8: "h", 9: "i", 11: "f", 12: "d",
               16: "Q", 17: "q", 18: "Q"}  # fmt: skip
_TAG_NEW_SUBFILE_TYPE = 254
_TAG_WIDTH, _TAG_HEIGHT = 256, 257
_TAG_TILE_WIDTH, _TAG_TILE_OFFSETS, _TAG_TILE_BYTE_COUNTS = 322, 324, 325


def _tiff_ifds(path: str | os.PathLike[str]) -> tuple[int, list[tuple[int, dict[int, tuple]]]]:
    """``(header size, [(ifd offset, {tag: values})])`` of a classic or BigTIFF file."""
    with open(path, "rb") as f:
        head = f.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None:
            raise ValueError(f"{path} is not a TIFF file")
        (magic,) = struct.unpack(order + "H", head[2:4])
        big = magic == 43
        if magic not in (42, 43):
            raise ValueError(f"{path} is not a TIFF file (magic {magic})")
        offset = struct.unpack(order + ("Q" if big else "I"), head[8:16] if big else head[4:8])[0]
        count_fmt, entry_size, off_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
        inline = 8 if big else 4
        ifds: list[tuple[int, dict[int, tuple[Any, ...]]]] = []
        while offset and len(ifds) < 1000:
            f.seek(offset)
            (n,) = struct.unpack(order + count_fmt, f.read(struct.calcsize(count_fmt)))
            raw = f.read(n * entry_size + struct.calcsize(off_fmt))
            tags: dict[int, tuple] = {}
            for i in range(n):
                entry = raw[i * entry_size : (i + 1) * entry_size]
                tag, typ = struct.unpack(order + "HH", entry[:4])
                count = struct.unpack(order + ("Q" if big else "I"), entry[4 : 4 + inline])[0]
                code = _TIFF_TYPES.get(typ)
                if code is None or code == "c" or tag not in _TAGS_READ:
                    continue
                size = struct.calcsize(code) * count
                if size <= inline:
                    data = entry[4 + inline : 4 + inline + size]
                else:
                    pos = struct.unpack(order + off_fmt, entry[4 + inline :])[0]
                    here = f.tell()
                    f.seek(pos)
                    data = f.read(size)
                    f.seek(here)
                tags[tag] = struct.unpack(order + code * count, data)
            ifds.append((offset, tags))
            (offset,) = struct.unpack(order + off_fmt, raw[n * entry_size :])
    return (16 if big else 8), ifds


_TAGS_READ = frozenset(
    {_TAG_NEW_SUBFILE_TYPE, _TAG_WIDTH, _TAG_HEIGHT, _TAG_TILE_WIDTH, _TAG_TILE_OFFSETS,
     _TAG_TILE_BYTE_COUNTS, 259, 284, 323}
)  # fmt: skip


def cog_layout_problems(path: str | os.PathLike[str]) -> list[str]:
    """What keeps a TIFF from being a Cloud-Optimized GeoTIFF (empty if nothing).

    The checks of GDAL's ``validate_cloud_optimized_geotiff.py``: the main
    image comes first and is tiled, there are tiled overviews of decreasing
    size, every IFD comes before the image data, the data of smaller overviews
    comes before that of larger ones and the full resolution comes last, and
    each level's tiles are stored in order.
    """
    header, ifds = _tiff_ifds(path)
    problems = []
    if not ifds:
        return ["no image (IFD) in the file"]
    if ifds[0][0] != header:
        problems.append(f"the main IFD is at byte {ifds[0][0]}, expected {header}")
    images = [(off, tags) for off, tags in ifds if not tags.get(_TAG_NEW_SUBFILE_TYPE, (0,))[0] & 4]
    main, overviews = images[0], images[1:]
    if main[1].get(_TAG_NEW_SUBFILE_TYPE, (0,))[0] & 1:
        problems.append("the first image is a reduced-resolution one")
    if not overviews:
        problems.append("no overviews")
    sizes = []
    for i, (_, tags) in enumerate(images):
        name = "full resolution" if i == 0 else f"overview {i}"
        if _TAG_TILE_WIDTH not in tags or _TAG_TILE_OFFSETS not in tags:
            problems.append(f"{name} is not tiled")
            return problems
        sizes.append(tags[_TAG_WIDTH][0] * tags[_TAG_HEIGHT][0])
    if sizes != sorted(sizes, reverse=True) or len(set(sizes)) != len(sizes):
        problems.append(f"image sizes are not decreasing: {sizes}")
    last_ifd = max(off for off, _ in ifds)
    starts: list[int | None] = []
    for i, (_, tags) in enumerate(images):
        name = "full resolution" if i == 0 else f"overview {i}"
        offsets = [o for o in tags[_TAG_TILE_OFFSETS] if o]
        if not offsets:
            starts.append(None)
            continue
        if min(offsets) < last_ifd:
            problems.append(f"{name} data starts before the last IFD (IFDs must come first)")
        if offsets != sorted(offsets):
            problems.append(f"the tiles of {name} are not stored in order")
        starts.append(min(offsets))
    present = [s for s in starts if s is not None]
    if present != sorted(present, reverse=True):
        problems.append("image data is not ordered smallest overview first, full resolution last")
    return problems


def _tiff_tags(path: str | os.PathLike[str]) -> list[dict[int, tuple]]:
    """The parsed tags of each IFD (for tests)."""
    return [tags for _, tags in _tiff_ifds(path)[1]]
