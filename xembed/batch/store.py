"""The resumable store of :func:`xembed.batch.extract`: a folder of Parquet parts.

One part per committed group, written atomically and durably
(:func:`xembed._util.atomic_write`), a manifest of what the store holds,
and the errors of the last run; see :mod:`xembed.batch` for the layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import shapely

from xembed._util import atomic_write, stacklevel
from xembed.batch.table import describe_error
from xembed.cube import Source
from xembed.sites import Site

__all__ = [
    "STORE_FORMAT",
    "Store",
    "make_manifest",
    "part_frame",
    "site_hash",
]

#: Version of the store layout written in ``_xembed_extract.json`` (2: parts carry
#: ``valid_fraction`` and ``valid_ha``; a format-1 store is refused, not mixed).
STORE_FORMAT = 2

_MANIFEST = "_xembed_extract.json"
_ERRORS = "_errors.parquet"
_PART_PREFIX = "part-"
_TMP_MAX_AGE = 3600.0  # seconds after which a leftover temporary file is removed


def site_hash(site: Site) -> str:
    """What identifies a site's geometry in the store (16 hex digits of its WKB's SHA-1)."""
    return hashlib.sha1(shapely.to_wkb(site.geometry, hex=True).encode()).hexdigest()[:16]


def make_manifest(
    years: Sequence[int], stats: Sequence[str], source: Source, id_type: str
) -> dict[str, Any]:
    """What a store holds: a re-run must pass the same to resume it."""
    return {
        "format": STORE_FORMAT,
        "years": list(years),
        "stats": list(stats),
        **source.describe(),
        "site_id_type": id_type,
    }


class Store:
    """A folder of Parquet parts, one per committed group (see :mod:`xembed.batch`)."""

    def __init__(self, path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(
                f"store {str(self.path)!r} is a file; pass a folder path (it is created if missing)"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        manifest_path = self.path / _MANIFEST
        if manifest_path.is_file():
            held = json.loads(manifest_path.read_text(encoding="utf-8"))
            if held.get("format") != STORE_FORMAT:
                raise ValueError(
                    f"store {str(self.path)!r} has layout format {held.get('format')!r}; this "
                    f"xembed writes format {STORE_FORMAT}: use a new store folder"
                )
            diff = [k for k in manifest if held.get(k) != manifest[k]]
            if diff:
                was = {k: held.get(k) for k in diff}
                now = {k: manifest[k] for k in diff}
                raise ValueError(
                    f"store {str(self.path)!r} was written with {was}, not {now}; pass the "
                    "same arguments to resume it, or a new store folder for a new extraction"
                )
        elif any(self.path.glob(f"{_PART_PREFIX}*.parquet")):
            raise ValueError(
                f"store {str(self.path)!r} holds parts but no {_MANIFEST}; it was not written "
                "by xembed.extract (or is damaged): pass a new store folder"
            )
        else:
            atomic_write(
                manifest_path,
                lambda tmp: tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8"),
                durable=True,
            )
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Delete stale temporaries of killed runs (atomic_write's hidden ``.*.tmp`` names)."""
        now = time.time()
        for tmp in self.path.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > _TMP_MAX_AGE:
                    tmp.unlink()

    def parts(self) -> list[Path]:
        """Committed parts only: ``part-*.parquet``; hidden temporary files never match."""
        return sorted(self.path.glob(f"{_PART_PREFIX}*.parquet"))

    def load(self, keys: Mapping[tuple[str, str], int]) -> dict[int, pd.DataFrame]:
        """Finished rows of the sites in ``keys`` ((id text, hash) -> input position)."""
        found: dict[int, pd.DataFrame] = {}
        for part in self.parts():
            try:
                frame = pd.read_parquet(part)
            except Exception as err:  # a damaged disk, not a half-written part
                warnings.warn(
                    f"ignoring unreadable store part {str(part)!r} ({describe_error(err)}); "
                    "its sites are computed again (delete the file to silence this)",
                    UserWarning,
                    stacklevel=stacklevel(),
                )
                continue
            text = frame["site_id"].astype(str)
            for (site_key, key_hash), rows in frame.groupby([text, frame["site_hash"]], sort=False):
                position = keys.get((str(site_key), str(key_hash)))
                if position is not None and position not in found:
                    found[position] = rows.drop(columns=["site_id", "site_hash"])
        return found

    def commit(self, frame: pd.DataFrame) -> Path:
        """Write one group's rows as a new part, atomically (temp file, fsync, rename)."""
        digest = hashlib.sha1()
        for key, key_hash in sorted(
            set(zip(frame["site_id"].astype(str), frame["site_hash"], strict=True))
        ):
            digest.update(f"{key}\0{key_hash}\0".encode())
        path = self.path / f"{_PART_PREFIX}{digest.hexdigest()[:20]}.parquet"
        atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False), durable=True)
        return path

    def write_errors(self, errors: pd.DataFrame) -> None:
        path = self.path / _ERRORS
        if errors.empty:
            path.unlink(missing_ok=True)
            return
        table = errors.assign(site_id=errors["site_id"].astype(str))
        atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False), durable=True)


def part_frame(
    sites: Sequence[Site],
    hashes: Sequence[str],
    id_type: str,
    rows: Mapping[int, pd.DataFrame],
    positions: Sequence[int],
) -> pd.DataFrame:
    """A part: rows of the sites at ``positions``, with their ``site_id`` and ``site_hash``."""
    frames = []
    for p in sorted(positions):
        frame = rows[p].drop(columns=["position"])
        site_id = sites[p].id if id_type == "int" else str(sites[p].id)
        frame.insert(0, "site_id", site_id)
        frame["site_hash"] = hashes[p]
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["site_id"] = out["site_id"].astype("int64" if id_type == "int" else "str")
    return out
