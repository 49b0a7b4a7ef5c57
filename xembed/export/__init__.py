"""Export cubes to Zarr, NetCDF and GeoTIFF, atomically, and open them back.

- :func:`to_zarr` / :func:`to_netcdf` write one cube with its CRS, coordinates,
  attrs and float32 values intact; ``quantize=True`` stores the embeddings as
  int8 with the official quantisation (4x smaller) instead;
  ``to_zarr(..., zarr_format=2)`` writes a store that older GDAL (3.6) and
  QGIS open.
- :func:`to_geotiff` writes a cube or an analysis result as Cloud-Optimized
  GeoTIFFs for GIS: one file per year, bands ``A00`` .. ``A63`` (or the
  result's own), nodata, CRS, north up.
- :func:`to_datatree` / :func:`write_sites_zarr` / :func:`open_sites` hold many
  sites (each on its own grid, even in different UTM zones) as one
  :class:`xarray.DataTree` with one group per site, ``site_{id}``.
- :func:`open_cube` opens an export back as a lazy cube, de-quantising int8
  stores and checking the schema.

How a store is laid out (so that plain ``xr.open_zarr`` / ``xr.open_dataset``
users, GDAL and other CF readers understand it):

- Encodings of the input are dropped first. A source's stale encoding (Xee
  sets ``scale_factor`` to the pixel size) would otherwise rescale the values
  on disk.
- The CRS is the CF grid mapping variable ``spatial_ref`` (what rioxarray
  writes); ``embeddings`` and ``coverage`` name it in their ``grid_mapping``
  and ``coordinates`` attributes, so ``ds.rio.crs`` works after a plain open.
  Open with ``decode_coords="all"`` to get the cube back *identical*; with the
  default ``decode_coords=True`` the only difference is a ``grid_mapping``
  attribute on the two variables.
- Zarr: format 3, the default Zstd codec, chunks of the cube's dask chunks
  (all years and bands, 256 x 256 pixels by default), the band names as
  variable-length strings, consolidated metadata. ``zarr_format=2``: the same
  with fixed-width band names, Zstd, and GDAL's ``_CRS`` attribute on every
  gridded variable (GDAL reads CF grid mappings in Zarr only from 3.9 on;
  :func:`open_cube` drops it). GDAL opens ``ZARR:"cube.zarr":/embeddings``
  as one band per (year, band).
- NetCDF-4 (h5netcdf): zlib level 1 with shuffle, HDF5 chunks of one year of
  the dask chunks (so each task writes whole HDF5 chunks).
- ``quantize=True``: the embeddings are stored as the variable
  ``embeddings_int8`` (there is no ``embeddings``, so no reader can take the
  codes for values): int8 ``q = round(sign(v) * sqrt(|v|) * 127.5)`` with
  ``_FillValue = -128`` (no data), a ``long_name`` saying they are codes, and
  the attributes ``xembed_quantized = 1`` and ``xembed_dequantize`` (the
  formula). A plain open masks -128 to NaN and returns ``q`` as float32;
  decode it with ``v = sign(q) * (q / 127.5) ** 2``
  (:func:`xembed.dequantize`), or use :func:`open_cube`, which does (it also
  reads older int8 exports, which named them ``embeddings``).

Writes are atomic: the store is written to a hidden sibling
``.{name}.tmp-XXXXXXXX`` and renamed into place only once complete; on any
error (or Ctrl-C) the temporary is removed and ``path`` is untouched. A process
killed outright can leave such a hidden temporary behind, never a store at
``path``.
"""

from __future__ import annotations

from xembed.export._store import DEQUANTIZE_ATTR as DEQUANTIZE_ATTR
from xembed.export._store import DEQUANTIZE_TEXT as DEQUANTIZE_TEXT
from xembed.export._store import QUANTIZED_ATTR, QUANTIZED_NAME
from xembed.export._store import SPATIAL_CHUNK as SPATIAL_CHUNK
from xembed.export._store import PathLike as PathLike
from xembed.export._store import WriteMode as WriteMode
from xembed.export.geotiff import to_geotiff
from xembed.export.read import is_cube_store, open_cube
from xembed.export.tree import open_sites, to_datatree, write_sites_zarr
from xembed.export.write import prepare_export, to_netcdf, to_zarr

__all__ = [
    "QUANTIZED_ATTR",
    "QUANTIZED_NAME",
    "is_cube_store",
    "open_cube",
    "open_sites",
    "prepare_export",
    "to_datatree",
    "to_geotiff",
    "to_netcdf",
    "to_zarr",
    "write_sites_zarr",
]
