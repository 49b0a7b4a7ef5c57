"""The bundled demo dataset: a small synthetic mirror, generated on first use.

:func:`sample_root` returns a folder laid out exactly like the public COG
mirror (see :mod:`xembed.sources.mirror`): bottom-up int8 ZSTD GeoTIFFs in
``{year}/{zone}/{eeImageId}-{yOff}-{xOff}.tiff`` and ``aef_index.parquet``.
It is generated deterministically (about 125 MB, 20-30 s on two cores) into
the user cache (``$XEMBED_CACHE`` or the platform cache folder) the first
time it is asked for. :func:`demo_sites` loads the matching restoration sites.

The place: the Atlantic Forest of São Paulo state, Brazil, where the
boundary between UTM zones 22S and 23S (longitude -48°) crosses latitude
-22.6°. Each zone has two Earth Engine images of 320 x 320 px (3.2 km)
stacked north-south (the 23S pair 1.28 km further north), each split into
2 x 2 files of 160 x 160 px with 128 px internal tiles (:func:`sample_images`).
The 22S images reach about 1.4 km east across -48° and the 23S images as
far west, but, as in zone-clipped data, every file holds data only on its
own zone's side, plus ~30 m of overlap so the mosaic has no seam along the
boundary (the rest is -128): about 1.8 km of data per zone,
6.4 km north-south. Years 2017-2024 for every file.

The embeddings are a deterministic function of position (a local metric
frame centred on -48°, -22.6°, so both zones agree at the boundary) and year:
land-cover fields (Voronoi cells of forest, pasture, cropland and small
reservoirs, a town, a river with riparian forest) each with its own 64-d
direction and per-field offset, smooth spatial variation, cropland rotation
and a small year-to-year drift, per-pixel noise, then normalised to unit
length and quantised. On top of that:

- each demo site (``xembed/data/demo_sites.geojson``) is pasture until its
  ``start_year`` and turns into forest over the next three years (sites
  started by 2014 are forest throughout); holes in a site are ponds;
- a deforestation event: a 44 ha forest patch, overlapping a third of site
  3107, is cleared and burnt in 2021 and is pasture from 2022 on;
- a nodata gap: a 1.1 x 0.75 km block of -128 in 2019, covering part of site
  3106, like a missing orbit.

The generator's truth, to measure models against: :func:`landcover` (class
codes per pixel and year) and :func:`tree_cover` (a continuous fraction).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xembed._util import cache_dir, temp_sibling
from xembed.sources import mirror
from xembed.sources.sample.layout import (
    BLOCKSIZE,
    FILE_PX,
    IMAGE_PX,
    IMAGES,
    LAT0,
    LON0,
    RES,
    SAMPLE_VERSION,
    SAMPLE_YEARS,
    SampleImage,
    build_demo_sites_geojson,
    demo_sites_path,
    sample_events,
    sample_images,
    write_demo_sites_geojson,
)
from xembed.sources.sample.truth import CLASS_NAMES, DETAIL_NAMES, landcover, tree_cover
from xembed.sources.sample.world import ImageField, World

if TYPE_CHECKING:
    from xembed.sites import Site

__all__ = [
    "BLOCKSIZE",
    "CLASS_NAMES",
    "DETAIL_NAMES",
    "FILE_PX",
    "IMAGE_PX",
    "LAT0",
    "LON0",
    "RES",
    "SAMPLE_VERSION",
    "SAMPLE_YEARS",
    "SampleImage",
    "build_demo_sites_geojson",
    "cache_dir",
    "demo_sites",
    "demo_sites_path",
    "generate_sample",
    "landcover",
    "sample_events",
    "sample_images",
    "sample_root",
    "tree_cover",
    "write_demo_sites_geojson",
]

logger = logging.getLogger(__name__)

_DIRNAME = f"sample-v{SAMPLE_VERSION}"
_MARKER = "xembed-sample.json"


# --------------------------------------------------------------------------- demo sites


def demo_sites() -> list[Site]:
    """The demo restoration sites that go with the sample data.

    Ten polygons (3 to 80 ha) with ``rid`` 3101..3110, a ``start_year`` and
    ``area_ha``: one crosses the UTM zone boundary, one is a MultiPolygon,
    one has a hole, one lies partly in a nodata gap, one partly in a
    deforestation event, one is stable forest throughout.

    Examples
    --------
    >>> sites = demo_sites()
    >>> [(s.id, s.start_year) for s in sites[:3]]
    [(3101, 2016), (3102, 2018), (3103, 2019)]
    """
    from xembed.sites import load_sites

    return load_sites(demo_sites_path())


# --------------------------------------------------------------------------- cache


def _source_digest() -> bytes:
    # Every module of this package and the writer: a change to any may change the data.
    code = [*sorted(Path(__file__).parent.glob("*.py")), Path(mirror.__file__)]
    return hashlib.sha256(b"".join(p.read_bytes() for p in code)).digest()


_SOURCE_DIGEST = _source_digest()  # of the code imported, not of later edits


def _fingerprint() -> str:
    """Hash of what the sample is made from: this generator, the writer, the sites.

    A cached sample whose marker holds another fingerprint is regenerated, so
    the cache never serves data from an older generator.
    """
    return hashlib.sha256(_SOURCE_DIGEST + demo_sites_path().read_bytes()).hexdigest()


def _is_complete(root: Path) -> bool:
    try:
        marker = json.loads((root / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("version") == SAMPLE_VERSION
        and marker.get("years") == list(SAMPLE_YEARS)
        and marker.get("fingerprint") == _fingerprint()
    )


def sample_root(*, cache: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the sample mirror, generating it on first use.

    Parameters
    ----------
    cache : path-like, optional
        The cache folder to use instead of :func:`cache_dir`.

    Returns
    -------
    pathlib.Path
        ``{cache}/sample-v1``: ``aef_index.parquet``, ``aef_index.csv`` and
        ``{year}/{zone}/*.tiff``.

    Notes
    -----
    Generation (20-40 s) writes into a temporary folder next to the
    target and renames it into place, so an interrupted run leaves no
    half-written sample, and concurrent processes each generate and the first
    rename wins (the others use it). A folder without the completion marker,
    or made by another sample version, is replaced.

    Examples
    --------
    >>> root = sample_root()
    >>> sorted(p.name for p in root.iterdir() if p.name.startswith("aef"))
    ['aef_index.csv', 'aef_index.parquet']
    """
    parent = Path(cache).expanduser() if cache is not None else cache_dir()
    root = parent / _DIRNAME
    if _is_complete(root):
        return root
    parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(parent)
    if root.exists():
        _move_aside(root)
    tmp = temp_sibling(root)
    tmp.mkdir()  # (not tempfile.mkdtemp: its 0700 mode would stick to the sample)
    try:
        message = f"xembed: generating the demo sample data in {root} (once; < 1 min)"
        logger.info(message)
        print(message, file=sys.stderr, flush=True)
        generate_sample(tmp)
        try:
            os.rename(tmp, root)
        except OSError:
            if not _is_complete(root):  # not another process's finished sample
                raise
            logger.info("another process generated %s first; using it", root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _remove_leftovers(parent: Path, max_age: float = 3600.0) -> None:
    """Delete temporary and stale sample folders that killed processes left behind."""
    now = time.time()
    for path in parent.glob(f".{_DIRNAME}.*"):
        try:
            if path.is_dir() and now - path.stat().st_mtime > max_age:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _move_aside(root: Path) -> None:
    """Remove an incomplete or outdated sample folder (rename first: atomic)."""
    if _is_complete(root):
        return
    trash = root.with_name(f".{root.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(root, trash)
    except FileNotFoundError:
        return
    logger.info("replacing the incomplete or outdated sample in %s", root)
    shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------- generation


def generate_sample(
    root: str | os.PathLike[str], *, years: tuple[int, ...] | list[int] = SAMPLE_YEARS
) -> Path:
    """Write the sample mirror into ``root`` (files, index, completion marker).

    Deterministic: the same bytes every time (on one platform and library
    set). ``years`` limits the years written (the marker is written only for
    the full set). Prefer :func:`sample_root`, which caches the result.
    """
    start = time.perf_counter()
    fingerprint = _fingerprint()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    years = tuple(int(y) for y in years)
    world = World()
    records = []
    pending: deque[Future[dict[str, Any]]] = deque()
    # the main thread computes image-years while workers compress and write files
    # (GDAL releases the GIL); at most 8 files wait, to bound memory
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for image in IMAGES:
            field = ImageField(world, image)
            for year in years:
                q = field.quantized(year)
                for rel, y_off, x_off in image.files(year):
                    tile = q[:, y_off : y_off + FILE_PX, x_off : x_off + FILE_PX]
                    west, north = image.west + x_off * RES, image.north - y_off * RES
                    pending.append(
                        pool.submit(_write_file, root, rel, image, year, west, north, tile)
                    )
                while len(pending) > 8:
                    records.append(pending.popleft().result())
        records.extend(f.result() for f in pending)
    mirror.write_index(root, records)
    if years == SAMPLE_YEARS:
        marker = {
            "version": SAMPLE_VERSION,
            "years": list(SAMPLE_YEARS),
            "files": len(records),
            "fingerprint": fingerprint,
            "description": (
                "Synthetic embeddings in the layout of the AlphaEarth Foundations COG mirror, "
                "generated by xembed for demos and tests; not real data."
            ),
        }
        (root / _MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    logger.info("generated %d sample files in %.1f s", len(records), time.perf_counter() - start)
    return root


def _write_file(
    root: Path, rel: str, image: SampleImage, year: int, west: float, north: float, q: np.ndarray
) -> dict[str, Any]:
    mirror.write_tile(
        root / rel, q, crs=image.crs, west=west, north=north, res=RES, blocksize=BLOCKSIZE
    )
    return mirror.index_record(
        rel,
        crs=image.crs,
        year=year,
        utm_zone=image.zone,
        west=west,
        south=north - FILE_PX * RES,
        east=west + FILE_PX * RES,
        north=north,
    )
