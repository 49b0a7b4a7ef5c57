"""Where an export lands and how: its layout constants, the engine checks, atomic targets.

A store is written to a hidden sibling ``.{name}.tmp-XXXXXXXX`` and moved into
place only once complete (see :func:`write_atomically`). The temporary is
named here, not with :func:`xembed._util.temp_sibling`: the package overview
documents this pattern so that users can find and remove what a killed
process left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import dask

__all__ = [
    "DEQUANTIZE_ATTR",
    "DEQUANTIZE_TEXT",
    "GDAL_CRS_ATTR",
    "ORIGINAL_LONG_NAME",
    "QUANTIZED_ATTR",
    "QUANTIZED_LONG_NAME",
    "QUANTIZED_NAME",
    "SPATIAL_CHUNK",
    "FolderKind",
    "PathLike",
    "WriteMode",
    "ZarrFormat",
    "atomic_target",
    "local_path",
    "looks_like_zarr",
    "netcdf_engine",
    "quiet_zarr",
    "require_zarr",
    "run_compute",
    "write_atomically",
]

PathLike = str | os.PathLike[str]
WriteMode = Literal["w-", "w"]
ZarrFormat = Literal[2, 3]

#: Name of the int8 codes in a ``quantize=True`` export. Not ``embeddings``: a
#: plain reader (xarray, GDAL, QGIS) CF-decodes the codes to float32 and would
#: take them for embedding values (up to 127), so the name says what they are.
QUANTIZED_NAME = "embeddings_int8"
QUANTIZED_LONG_NAME = (
    "AlphaEarth embeddings as int8 codes q (not embedding values): v = sign(q) * (q / 127.5) ** 2"
)
#: Where the embeddings' own ``long_name`` is kept in a quantised export.
ORIGINAL_LONG_NAME = "xembed_long_name"
#: Attribute marking int8-quantised embeddings (value 1).
QUANTIZED_ATTR = "xembed_quantized"
#: Attribute telling plain readers how to decode quantised embeddings.
DEQUANTIZE_ATTR = "xembed_dequantize"
DEQUANTIZE_TEXT = (
    "v = sign(q) * (q / 127.5) ** 2, where q is the stored int8 value and -128 "
    "(the _FillValue) means no data; xembed.open_cube(path) or xembed.dequantize(q) "
    "does this"
)
#: GDAL's own CRS attribute of Zarr arrays (``{"wkt": ...}``), written to format 2
#: stores for GDAL versions that do not read CF grid mappings (before 3.9).
GDAL_CRS_ATTR = "_CRS"
#: On-disk tile of the spatial dims when the input has no (regular) dask chunks.
SPATIAL_CHUNK = 256
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zmetadata")


# --- engines --------------------------------------------------------------------


def require_zarr() -> None:
    """Raise an ImportError saying what to install unless zarr>=3 is importable."""
    try:
        import zarr
    except ImportError as err:
        raise ImportError(
            "writing or reading Zarr needs zarr>=3; install it with pip install 'xembed[io]' "
            "(or: pip install 'zarr>=3')"
        ) from err
    if int(zarr.__version__.split(".")[0]) < 3:
        raise ImportError(
            f"xembed writes Zarr format 3, which needs zarr>=3 (found {zarr.__version__}); "
            "upgrade with pip install -U 'zarr>=3'"
        )


def netcdf_engine() -> str:
    """The xarray engine for NetCDF-4: h5netcdf, else netcdf4, else an ImportError."""
    for engine, module in (("h5netcdf", "h5netcdf"), ("netcdf4", "netCDF4")):
        try:
            __import__(module)
        except ImportError:
            continue
        return engine
    raise ImportError(
        "writing or reading NetCDF needs h5netcdf (or netCDF4); install it with "
        "pip install 'xembed[io]' (or: pip install h5netcdf h5py)"
    )


@contextlib.contextmanager
def quiet_zarr() -> Iterator[None]:
    """Silence Zarr 3's warning about consolidated metadata.

    It is not (yet) in the v3 spec; xarray and zarr-python read it, and other
    readers fall back to the plain metadata.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        yield


# --- atomic writes --------------------------------------------------------------


def local_path(path: PathLike) -> Path:
    """``path`` made absolute, or a ValueError for a URL (atomic writes need a folder)."""
    text = os.fspath(path)
    if "://" in text:
        raise ValueError(
            f"{text!r} is not a local path; atomic export needs a local folder. For object "
            "stores write the prepared dataset directly: "
            "xembed.export.prepare_export(ds).to_zarr(url)"
        )
    return Path(text).expanduser().absolute()


def looks_like_zarr(path: Path) -> bool:
    """Whether ``path`` is a folder with Zarr (v2 or v3) metadata."""
    return path.is_dir() and any((path / marker).exists() for marker in _ZARR_MARKERS)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _remove_settled(path: Path, *, settle: float = 0.1, limit: float = 5.0) -> None:
    """Remove ``path`` and keep removing it until nothing recreates it for ``settle`` s.

    When one chunk of a write fails, dask raises at once while the tasks already
    running in its thread pool still finish and write their chunk files into
    the temporary store; a single removal could race with them and leave a
    partial folder behind.
    """
    deadline = time.monotonic() + limit
    while True:
        _remove(path)
        time.sleep(settle)
        if not os.path.lexists(path) or time.monotonic() > deadline:
            return


#: What a folder target may replace (mode "w"): a test and its name for messages.
FolderKind = tuple[Callable[[Path], bool], str]
_ZARR_FOLDER: FolderKind = (looks_like_zarr, "a Zarr store")


def _check_target(
    path: Path, mode: str, *, directory: bool, folder: FolderKind = _ZARR_FOLDER
) -> None:
    if mode not in ("w-", "w"):
        raise ValueError(
            f"mode must be 'w-' (create, fail if it exists) or 'w' (replace), got {mode!r}; "
            "appending to an export is not supported, write a new one"
        )
    if not os.path.lexists(path):
        return
    if mode == "w-":
        raise FileExistsError(
            f"{path} already exists; pass mode='w' to replace it, or choose another path"
        )
    replaceable, kind = folder
    if directory and not replaceable(path):
        raise FileExistsError(
            f"refusing to replace {path}: it is not {kind}; remove it yourself or "
            "choose another path"
        )
    if not directory and path.is_dir():
        raise FileExistsError(
            f"refusing to replace the folder {path} with a NetCDF file; choose another path"
        )


def _commit(tmp: Path, path: Path, mode: str, *, directory: bool, folder: FolderKind) -> None:
    """Move the finished temporary into place (replacing ``path`` for mode 'w')."""
    if not os.path.lexists(path):
        # A directory rename fails if `path` appeared (non-empty) meanwhile.
        os.rename(tmp, path)
        return
    _check_target(path, mode, directory=directory, folder=folder)  # raises for 'w-'
    if not directory and not path.is_dir():
        os.replace(tmp, path)  # atomic for files
        return
    aside = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
    os.rename(path, aside)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(aside, path)
        raise
    _remove(aside)


@contextlib.contextmanager
def atomic_target(
    path: PathLike, mode: str, *, directory: bool, folder: FolderKind = _ZARR_FOLDER
) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``path``; move it into place on success.

    On any exception (including KeyboardInterrupt) the temporary is removed and
    ``path`` is left as it was. ``folder`` says which existing folders mode
    ``"w"`` may replace (default: Zarr stores).

    Examples
    --------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> with atomic_target(os.path.join(folder, "a.txt"), "w-", directory=False) as tmp:
    ...     _ = tmp.write_text("done")
    >>> os.listdir(folder)
    ['a.txt']
    """
    target = local_path(path)
    _check_target(target, mode, directory=directory, folder=folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
    try:
        yield tmp
        _commit(tmp, target, mode, directory=directory, folder=folder)
    except BaseException:
        _remove_settled(tmp)
        raise


def run_compute(delayed: Any, *, progress: bool) -> None:
    """Compute ``delayed`` (one dask compute), with a terminal progress bar if asked."""
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            dask.compute(delayed)
    else:
        dask.compute(delayed)


def write_atomically(
    path: PathLike,
    mode: str,
    write: Callable[[Path], Any],
    *,
    directory: bool,
    progress: bool,
) -> Path:
    """``write(tmp)`` (lazily: it returns a dask delayed), compute it, move it to ``path``.

    Parameters
    ----------
    path : str or path
        The local target; parent folders are created.
    mode : {"w-", "w"}
        ``"w-"`` fails if ``path`` exists; ``"w"`` replaces it once the new
        one is complete (a Zarr store or, for files, anything but a folder).
    write : callable
        Writes the metadata to the temporary path it is given and returns
        the delayed write of the data.
    directory : bool
        Whether the target is a folder (Zarr) rather than a file (NetCDF).
    progress : bool
        Show a dask progress bar in the terminal.

    Returns
    -------
    pathlib.Path
        The absolute path of ``path``.

    Examples
    --------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> def write(tmp):
    ...     tmp.write_text("done")
    >>> write_atomically(os.path.join(folder, "a.txt"), "w-", write, directory=False,
    ...                  progress=False).read_text()
    'done'
    """
    with atomic_target(path, mode, directory=directory) as tmp:
        run_compute(write(tmp), progress=progress)
    return local_path(path)
