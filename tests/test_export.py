"""Export: Zarr/NetCDF round trips, int8 quantisation, atomic writes, many sites."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from xembed import export
from xembed.errors import SchemaError
from xembed.export import _store
from xembed.schema import dequantize, quantize
from xembed.testing import make_cube, raise_if_dask_computes

pytest.importorskip("zarr")

FORMATS = ("zarr", "netcdf")


def write(ds: xr.Dataset, path: Path, fmt: str, **kwargs) -> Path:
    if fmt == "zarr":
        return export.to_zarr(ds, path, **kwargs)
    return export.to_netcdf(ds, path, **kwargs)


def plain_open(path: Path, fmt: str, **kwargs) -> xr.Dataset:
    """What a user without xembed does."""
    if fmt == "zarr":
        return xr.open_zarr(path, **kwargs)
    pytest.importorskip("h5netcdf")
    return xr.open_dataset(path, **kwargs)


def target(tmp_path: Path, fmt: str, name: str = "cube") -> Path:
    return tmp_path / (f"{name}.zarr" if fmt == "zarr" else f"{name}.nc")


def disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def leftovers(folder: Path) -> list[str]:
    """Hidden temporaries or set-aside old stores left next to an export."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def without_grid_mapping_attr(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    for var in ds.variables.values():
        var.attrs.pop("grid_mapping", None)
    return ds


@pytest.fixture
def cube() -> xr.Dataset:
    # clip=True: NaNs outside the polygon must survive too
    return make_cube(years=(2019, 2020, 2021), shape=(40, 36), chunks={"y": 16}, clip=True)


def failing_cube(fail_block: tuple[int, int, int, int] = (0, 0, 1, 0)) -> xr.Dataset:
    """A lazy cube whose ``fail_block`` raises when computed: an export dies mid-write."""
    good = make_cube(shape=(32, 32), chunks={"y": 16, "x": 16})

    def maybe_fail(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        if block_info is not None and tuple(block_info[0]["chunk-location"]) == fail_block:
            raise RuntimeError("simulated failure mid-export")
        return block

    data = good["embeddings"].data.map_blocks(maybe_fail, dtype=np.float32)
    return good.assign(embeddings=good["embeddings"].copy(data=data))


# --- round trips ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_is_identical(tmp_path: Path, cube: xr.Dataset, fmt: str) -> None:
    path = write(cube, target(tmp_path, fmt), fmt)

    # Plain xarray, CF-decoding the grid mapping: exactly the cube.
    with plain_open(path, fmt, decode_coords="all") as back:
        xr.testing.assert_identical(back, cube)
        assert back["embeddings"].dtype == np.float32
        assert back.rio.crs.to_epsg() == 32722

    # Plain xarray, default decoding: only the CF `grid_mapping` attribute
    # shows, and rioxarray finds the CRS (spatial_ref is a coordinate).
    with plain_open(path, fmt) as back:
        assert back["embeddings"].attrs["grid_mapping"] == "spatial_ref"
        assert "spatial_ref" in back.coords
        assert back.rio.crs.to_epsg() == 32722
        xr.testing.assert_identical(without_grid_mapping_attr(back), cube)

    # xembed: lazy, the same cube, the same Python types in attrs.
    opened = export.open_cube(path)
    assert opened["embeddings"].chunks is not None
    xr.testing.assert_identical(opened, cube)
    assert opened["band"].dtype == cube["band"].dtype
    assert opened["year"].dtype == np.int64
    assert opened.attrs == cube.attrs
    assert {k: type(v) for k, v in opened.attrs.items()} == {
        k: type(v) for k, v in cube.attrs.items()
    }
    np.testing.assert_array_equal(opened.embeddings.values, cube.embeddings.values)


# zarr warns that fixed-width strings (band names) and consolidated metadata
# are outside the v3 spec: what export.to_zarr avoids or silences
@pytest.mark.filterwarnings("ignore:The data type")
@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_plain_to_zarr_of_a_cube_opens_with_open_cube(tmp_path: Path, cube: xr.Dataset) -> None:
    path = tmp_path / "plain.zarr"
    cube.to_zarr(path)
    xr.testing.assert_identical(export.open_cube(path), cube)


@pytest.mark.parametrize("fmt", FORMATS)
def test_stale_scale_factor_encoding_does_not_rescale(tmp_path: Path, fmt: str) -> None:
    cube = make_cube(shape=(16, 16), chunks={"y": 8})
    stale = cube.copy()
    # What Xee leaves behind (scale_factor = the pixel size), and worse.
    stale["embeddings"].encoding.update(
        {"scale_factor": 10.0, "add_offset": 1.0, "dtype": "int16", "_FillValue": -9999}
    )
    stale["coverage"].encoding.update({"scale_factor": 10.0, "chunks": (3, 3)})
    stale["x"].encoding.update({"scale_factor": 10.0, "dtype": "int16"})
    path = write(stale, target(tmp_path, fmt), fmt)
    back = export.open_cube(path)
    xr.testing.assert_identical(back, cube)
    with plain_open(path, fmt, decode_coords="all") as plain:
        xr.testing.assert_identical(plain, cube)
    assert stale["embeddings"].encoding["scale_factor"] == 10.0  # the input is untouched
    assert "grid_mapping" not in stale["embeddings"].encoding


def test_packing_attributes_are_refused(tmp_path: Path) -> None:
    cube = make_cube(shape=(8, 8))
    cube["embeddings"].attrs["scale_factor"] = 10.0
    with pytest.raises(SchemaError, match=r"scale_factor.*rescale.*decode_cf"):
        export.to_zarr(cube, tmp_path / "c.zarr")
    assert list(tmp_path.iterdir()) == []


# --- int8 -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_round_trip_within_one_step(tmp_path: Path, fmt: str) -> None:
    cube = make_cube(years=(2020, 2021), shape=(64, 64), chunks={"y": 32})
    cube["embeddings"] = cube["embeddings"].where(cube["x"] < cube["x"][60])  # some NaN
    full = write(cube, target(tmp_path, fmt, "full"), fmt)
    small = write(cube, target(tmp_path, fmt, "small"), fmt, quantize=True)

    back = export.open_cube(small)
    assert back["embeddings"].dtype == np.float32
    assert "xembed_quantized" not in back["embeddings"].attrs
    xr.testing.assert_identical(back.drop_vars("embeddings"), cube.drop_vars("embeddings"))
    v = cube["embeddings"].values
    w = back["embeddings"].values
    np.testing.assert_array_equal(np.isnan(w), np.isnan(v))
    # |v - v'| <= half a quantisation step at v: with s = sqrt|v| * 127.5 and
    # |s - |q|| <= 1/2, |v - v'| <= (2 s |q - s| + ...) / 127.5**2 <= (s + 1/4) / 127.5**2.
    s = np.sqrt(np.abs(v)) * 127.5
    bound = (s + 0.25) / 127.5**2 + 1e-7
    ok = ~np.isnan(v)
    assert np.all(np.abs(w - v)[ok] <= bound[ok])
    assert np.abs(w - v)[ok].max() > 0  # it is quantised
    np.testing.assert_array_equal(w, dequantize(quantize(v)))  # the official formulas

    # ~4x smaller on disk (int8 vs float32; NetCDF's shuffle compresses float a bit).
    ratio = disk_size(full) / disk_size(small)
    assert ratio > (3.7 if fmt == "zarr" else 3.0), ratio

    # A plain reader gets int8 codes masked to NaN, and the recipe in the attrs.
    with plain_open(small, fmt) as plain:
        q = plain["embeddings_int8"]
        assert q.encoding["dtype"] == np.int8
        assert q.attrs["xembed_quantized"] == 1
        assert "sign(q) * (q / 127.5) ** 2" in q.attrs["xembed_dequantize"]
        decoded = np.sign(q) * (q / 127.5) ** 2
        np.testing.assert_array_equal(decoded.values, w)
        assert plain.rio.crs.to_epsg() == 32722


def test_quantized_zarr_stores_int8_with_nodata_fill(tmp_path: Path) -> None:
    import zarr

    cube = make_cube(shape=(8, 8), clip=True)
    path = export.to_zarr(cube, tmp_path / "q.zarr", quantize=True)
    array = zarr.open_array(path / "embeddings_int8", mode="r")
    assert array.dtype == np.int8
    assert array.fill_value == -128  # a chunk never written reads as no data
    raw = array[:]
    assert (raw[np.isnan(cube["embeddings"].values)] == -128).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_plain_readers_cannot_mistake_int8_codes_for_embeddings(tmp_path: Path, fmt: str) -> None:
    """Issue 12 item 5: without xembed, a quantised export read as float32 'embeddings'."""
    cube = make_cube(years=(2020, 2021), shape=(16, 16), clip=True)
    path = write(cube, target(tmp_path, fmt), fmt, quantize=True)
    with plain_open(path, fmt) as plain:
        assert "embeddings" not in plain  # nothing to mistake for embedding values
        codes = plain["embeddings_int8"]
        assert codes.dims == ("year", "band", "y", "x")
        assert "sign(q) * (q / 127.5) ** 2" in codes.attrs["xembed_dequantize"]
        assert "int8 codes" in codes.attrs["long_name"]
        assert float(codes.max()) > 1.5  # codes, not values: what the name says
        assert plain.rio.crs.to_epsg() == 32722
    back = export.open_cube(path)
    assert sorted(back.data_vars) == ["coverage", "embeddings"]
    assert back.attrs == cube.attrs and back.embeddings.attrs == cube.embeddings.attrs
    np.testing.assert_array_equal(
        back.embeddings.values, dequantize(quantize(cube.embeddings.values))
    )


def test_open_cube_reads_int8_exports_written_before_the_rename(tmp_path: Path) -> None:
    """Stores written before issue 12 named the int8 codes 'embeddings' (marked in attrs)."""
    cube = make_cube(shape=(8, 8), clip=True)
    codes = xr.apply_ufunc(quantize, cube.embeddings, keep_attrs=True)
    codes.attrs.update({"xembed_quantized": 1, "xembed_dequantize": "v = sign(q) * ..."})
    old = cube.assign(embeddings=codes)
    old["embeddings"].encoding["_FillValue"] = -128
    old.to_netcdf(tmp_path / "old.nc", engine="h5netcdf")
    back = export.open_cube(tmp_path / "old.nc")
    assert "xembed_quantized" not in back.embeddings.attrs
    np.testing.assert_array_equal(
        back.embeddings.values, dequantize(quantize(cube.embeddings.values))
    )


def test_quantized_codes_are_not_exported_as_embeddings(tmp_path: Path) -> None:
    path = export.to_zarr(make_cube(shape=(8, 8)), tmp_path / "q.zarr", quantize=True)
    with xr.open_zarr(path) as raw:
        with pytest.raises(SchemaError, match="open_cube"):
            export.to_zarr(raw, tmp_path / "again.zarr")


# --- atomic writes ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_export_leaves_nothing(tmp_path: Path, fmt: str) -> None:
    path = target(tmp_path, fmt)
    with pytest.raises(RuntimeError, match="simulated failure"):
        write(failing_cube(), path, fmt)
    assert not os.path.lexists(path)
    assert leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="no exported cube"):
        export.open_cube(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_overwrite_keeps_the_old_store(tmp_path: Path, fmt: str) -> None:
    old = make_cube(shape=(8, 8))
    path = write(old, target(tmp_path, fmt), fmt)
    with pytest.raises(RuntimeError, match="simulated failure"):
        write(failing_cube(), path, fmt, mode="w")
    assert leftovers(tmp_path) == []
    xr.testing.assert_identical(export.open_cube(path), old)


@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupt_after_metadata_cleans_up(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C once the metadata is written but before the data: no store, no temp."""
    seen: list[Path] = []

    def interrupted(delayed: object, *, progress: bool) -> None:
        seen.extend(p for p in tmp_path.iterdir() if ".tmp-" in p.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(_store, "run_compute", interrupted)
    path = target(tmp_path, fmt)
    with pytest.raises(KeyboardInterrupt):
        write(make_cube(shape=(8, 8)), path, fmt)
    assert seen and seen[0].name.startswith(f".{path.name}.tmp-")  # it wrote to a temp
    assert not os.path.lexists(path)
    assert leftovers(tmp_path) == []


def test_failed_rename_restores_the_old_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = make_cube(shape=(8, 8))
    path = export.to_zarr(old, tmp_path / "cube.zarr")
    real_rename = os.rename
    calls: list[str] = []

    def flaky_rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(os.fspath(src))
        if len(calls) == 2:  # old moved aside; now the new one fails to move in
            raise OSError("simulated rename failure")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", flaky_rename)
    with pytest.raises(OSError, match="simulated rename"):
        export.to_zarr(make_cube(shape=(8, 8), seed=1), path, mode="w")
    monkeypatch.setattr(os, "rename", real_rename)
    assert leftovers(tmp_path) == []
    xr.testing.assert_identical(export.open_cube(path), old)


@pytest.mark.parametrize("fmt", FORMATS)
def test_modes(tmp_path: Path, fmt: str) -> None:
    first, second = make_cube(shape=(8, 8)), make_cube(shape=(8, 8), seed=1)
    path = write(first, target(tmp_path, fmt), fmt)
    with pytest.raises(FileExistsError, match=r"already exists; pass mode='w' to replace it"):
        write(second, path, fmt)
    xr.testing.assert_identical(export.open_cube(path), first)
    write(second, path, fmt, mode="w")
    xr.testing.assert_identical(export.open_cube(path), second)
    assert leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="mode must be 'w-'"):
        write(second, path, fmt, mode="a")


def test_mode_w_refuses_to_replace_what_is_not_a_store(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a Zarr store"):
        export.to_zarr(make_cube(shape=(8, 8)), precious, mode="w")
    with pytest.raises(FileExistsError, match="folder"):
        export.to_netcdf(make_cube(shape=(8, 8)), precious, mode="w")
    assert (precious / "notes.txt").read_text() == "keep me"


def test_bad_inputs(tmp_path: Path) -> None:
    cube = make_cube(shape=(8, 8))
    with pytest.raises(TypeError, match="to_dataset"):
        export.to_zarr(cube["embeddings"], tmp_path / "a.zarr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"not a local path.*prepare_export"):
        export.to_zarr(cube, "s3://bucket/a.zarr")
    with pytest.raises(SchemaError, match="no CRS"):
        export.to_zarr(cube.drop_vars("spatial_ref"), tmp_path / "b.zarr")
    with pytest.raises(SchemaError, match="quantize=True needs"):
        export.to_zarr(cube[["coverage"]], tmp_path / "c.zarr", quantize=True)
    # Datasets that are not cubes still export (e.g. a similarity map).
    other = cube[["coverage"]].rename(coverage="similarity")
    xr.testing.assert_identical(
        xr.open_zarr(export.to_zarr(other, tmp_path / "d.zarr"), decode_coords="all"), other
    )
    with pytest.raises(SchemaError, match="no 'embeddings'"):
        export.open_cube(tmp_path / "d.zarr")
    assert leftovers(tmp_path) == []


# --- laziness ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("quantized", [False, True])
def test_export_streams_chunk_by_chunk(tmp_path: Path, fmt: str, quantized: bool) -> None:
    """One dask compute in which every chunk is produced once, then written: streamed."""
    chunk = (2, 64, 16, 16)
    lock = threading.Lock()
    calls: list[tuple[int, ...]] = []

    def produce(block_info: dict | None = None) -> np.ndarray:
        info = block_info[None]  # type: ignore[index]
        with lock:
            calls.append(tuple(info["chunk-location"]))
        rng = np.random.default_rng(list(info["chunk-location"]))
        return rng.normal(size=info["chunk-shape"]).astype(np.float32) / 8

    template = make_cube(shape=(48, 32))
    data = da.map_blocks(
        produce,
        chunks=tuple((c,) * (n // c) for c, n in zip(chunk, (2, 64, 48, 32), strict=True)),
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), np.float32),
    )
    lazy = template.assign(embeddings=template["embeddings"].copy(data=data))
    with raise_if_dask_computes(max_computes=1) as scheduler:
        path = write(lazy, target(tmp_path, fmt), fmt, quantize=quantized)
    assert scheduler.total_computes == 1
    n_chunks = (48 // 16) * (32 // 16)
    assert len(calls) == n_chunks and len(set(calls)) == n_chunks  # each once, no reruns
    back = export.open_cube(path)
    assert back["embeddings"].shape == (2, 64, 48, 32)
    assert back["embeddings"].chunks is not None


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export.to_zarr(make_cube(shape=(8, 8), chunks={"y": 4}), tmp_path / "p.zarr", progress=True)
    assert "100%" in capsys.readouterr().out


# --- many sites -------------------------------------------------------------------


def test_datatree_of_demo_sites_in_two_zones(tmp_path: Path, demo_sites: list) -> None:
    from xembed import open_embeddings

    by_id = {str(site.id): site for site in demo_sites}
    cubes = [open_embeddings(by_id[i], (2020, 2021)) for i in ("3101", "3102")]
    zones = [cube.attrs["utm_zone"] for cube in cubes]
    assert zones == ["22S", "23S"]  # different CRSs, different grids

    tree = export.to_datatree(cubes)
    assert sorted(tree.children) == ["site_3101", "site_3102"]
    assert tree.attrs["site_ids"] == ["3101", "3102"]

    path = export.write_sites_zarr(cubes, tmp_path / "sites.zarr", quantize=False)
    back = export.open_sites(path)
    assert back.attrs["site_ids"] == ["3101", "3102"]
    for cube in cubes:
        group = back[f"site_{cube.attrs['site_id']}"].to_dataset()
        xr.testing.assert_identical(group, cube.drop_encoding())
        assert group.rio.crs == cube.rio.crs
        assert group["embeddings"].chunks is not None
    epsg = {name: node.to_dataset().rio.crs.to_epsg() for name, node in back.children.items()}
    assert epsg == {"site_3101": 32722, "site_3102": 32723}

    # Plain xarray reads the tree too, CRS and all.
    plain = xr.open_datatree(path, engine="zarr", decode_coords="all")
    xr.testing.assert_identical(plain["site_3102"].to_dataset(), cubes[1].drop_encoding())
    assert plain["site_3102"].to_dataset().rio.crs.to_epsg() == 32723

    # One site of it through open_cube; the whole store points to open_sites.
    one = export.open_cube(path, group="site_3101")
    xr.testing.assert_identical(one, cubes[0])
    with pytest.raises(SchemaError, match=r"open_sites\(path\)"):
        export.open_cube(path)

    # The tree written again, int8: lossless here, as the mirror's data are int8 codes.
    small = export.write_sites_zarr(tree, tmp_path / "small.zarr", quantize=True)
    again = export.open_sites(small)
    xr.testing.assert_identical(again["site_3102"].to_dataset(), cubes[1].drop_encoding())
    assert leftovers(tmp_path) == []


def test_many_sites_errors(tmp_path: Path) -> None:
    a = make_cube(shape=(8, 8))
    with pytest.raises(SchemaError, match="unique"):
        export.to_datatree([a, a])
    with pytest.raises(SchemaError, match="site_id"):
        export.to_datatree([a.drop_attrs()])
    with pytest.raises(TypeError, match="to_zarr"):
        export.to_datatree(a)  # type: ignore[arg-type]
    tree = export.to_datatree({"plot a/1": a, 7: make_cube(shape=(4, 4), crs="EPSG:32723")})
    assert sorted(tree.children) == ["site_7", "site_plot_a_1"]
    with pytest.raises(RuntimeError, match="simulated failure"):
        export.write_sites_zarr({"ok": a, "bad": failing_cube()}, tmp_path / "s.zarr")
    assert list(tmp_path.iterdir()) == []
    single = export.to_zarr(a, tmp_path / "one.zarr")
    with pytest.raises(SchemaError, match="no site groups"):
        export.open_sites(single)


def test_is_cube_store(tmp_path: Path) -> None:
    cube = make_cube(shape=(8, 8))
    assert export.is_cube_store(export.to_zarr(cube, tmp_path / "a.zarr"))
    assert export.is_cube_store(str(export.to_netcdf(cube, tmp_path / "a.nc")))
    (tmp_path / "sites.geojson").write_text("{}")
    assert not export.is_cube_store(tmp_path / "sites.geojson")
    assert not export.is_cube_store(tmp_path)


# --- GDAL -------------------------------------------------------------------------


def _without_cf_grid_mapping(store: Path) -> None:
    """What GDAL before 3.9 sees: it ignores CF grid mappings and reads only ``_CRS``."""
    import json

    for attrs in store.glob("*/.zattrs"):
        meta = json.loads(attrs.read_text())
        meta.pop("grid_mapping", None)
        attrs.write_text(json.dumps(meta))
    (store / ".zmetadata").unlink()


@pytest.mark.parametrize("quantized", [False, True])
def test_zarr_format_2_opens_in_gdal(tmp_path: Path, quantized: bool) -> None:
    """Issue 12 item 12: GDAL 3.6 (QGIS) reads Zarr v2 only, and CRSs only from ``_CRS``."""
    rasterio = pytest.importorskip("rasterio")
    cube = make_cube(years=(2020, 2021), shape=(24, 20), chunks={"y": 16}, clip=True)
    path = export.to_zarr(cube, tmp_path / "v2.zarr", zarr_format=2, quantize=quantized)
    assert (path / ".zgroup").exists() and not (path / "zarr.json").exists()
    name = "embeddings_int8" if quantized else "embeddings"
    expected = cube.embeddings.values.reshape(2 * 64, 24, 20)  # GDAL: one band per (year, band)
    if quantized:
        expected = quantize(expected)
    _without_cf_grid_mapping(path)
    with rasterio.open(f'ZARR:"{path}":/{name}') as src:
        assert (src.count, src.height, src.width) == (2 * 64, 24, 20)
        assert src.crs.to_epsg() == 32722
        x0, y0 = float(cube.x[0]) - 5, float(cube.y[0]) + 5
        assert tuple(src.transform)[:6] == (10.0, 0.0, x0, 0.0, -10.0, y0)  # north up
        np.testing.assert_array_equal(src.read(), expected)
        assert src.nodata == -128 if quantized else np.isnan(src.nodata)
    with rasterio.open(f'ZARR:"{path}":/coverage') as src:
        np.testing.assert_array_equal(src.read(1), cube.coverage.values)
    # xembed reads it back as the same cube (the _CRS attribute does not leak).
    back = export.open_cube(path)
    if not quantized:
        xr.testing.assert_identical(back, cube)
    assert "_CRS" not in back.embeddings.attrs and "_CRS" not in back.coverage.attrs
    with pytest.raises(ValueError, match="zarr_format"):
        export.to_zarr(cube, tmp_path / "v4.zarr", zarr_format=4)  # type: ignore[arg-type]


def test_many_sites_in_zarr_format_2(tmp_path: Path) -> None:
    cubes = {"a": make_cube(shape=(8, 8)), "b": make_cube(shape=(6, 4), crs="EPSG:32723")}
    path = export.write_sites_zarr(cubes, tmp_path / "sites.zarr", zarr_format=2)
    assert (path / "site_b" / ".zgroup").exists()
    back = export.open_sites(path)
    xr.testing.assert_identical(back["site_b"].to_dataset(), cubes["b"])


# --- GeoTIFF ----------------------------------------------------------------------


def gdal_info(path: Path) -> dict:
    """What ``gdalinfo`` reports, read through rasterio's GDAL (and gdalinfo, if installed)."""
    import shutil
    import subprocess

    import rasterio

    with rasterio.open(path) as src:
        info = {
            "count": src.count,
            "dtype": src.dtypes[0],
            "descriptions": list(src.descriptions),
            "nodata": src.nodata,
            "epsg": src.crs.to_epsg(),
            "transform": tuple(src.transform)[:6],
            "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
            "colorinterp": [c.name for c in src.colorinterp],
            "tags": src.tags(),
            "values": src.read(),
            "overviews": src.overviews(1),
        }
    if shutil.which("gdalinfo"):  # the command line, where GDAL's tools are installed
        import json

        out = json.loads(
            subprocess.run(
                ["gdalinfo", "-json", str(path)], capture_output=True, check=True, text=True
            ).stdout
        )
        assert [b.get("description") for b in out["bands"]] == info["descriptions"]
    return info


def north_up_transform(da: xr.DataArray) -> tuple[float, ...]:
    return (10.0, 0.0, float(da.x.min()) - 5, 0.0, -10.0, float(da.y.max()) + 5)


def test_cube_to_geotiff_one_year(tmp_path: Path) -> None:
    """Issue 12 item 11: one float32 COG per year, bands A00..A63, NaN nodata, CRS, north up."""
    pytest.importorskip("rasterio")
    cube = make_cube(years=(2020, 2021), shape=(300, 260), chunks={"y": 128}, clip=True)
    cube.attrs["site_id"] = "3107"
    path = export.to_geotiff(cube, tmp_path / "site_2021.tif", year=2021)
    assert path == tmp_path / "site_2021.tif"
    info = gdal_info(path)
    assert info["count"] == 64 and info["dtype"] == "float32"
    assert info["descriptions"] == [f"A{i:02d}" for i in range(64)]
    assert np.isnan(info["nodata"])
    assert info["epsg"] == 32722 and info["layout"] == "COG"
    assert info["transform"] == north_up_transform(cube)
    assert info["overviews"]  # a COG a GIS can zoom out of
    assert info["tags"]["year"] == "2021" and info["tags"]["site_id"] == "3107"
    np.testing.assert_array_equal(info["values"], cube.embeddings.sel(year=2021).values)
    # The accessor writes the same file; a cube stored south-up is flipped north-up.
    south_up = cube.isel(y=slice(None, None, -1))
    again = south_up.embed.to_geotiff(tmp_path / "again.tif", year=2021)
    np.testing.assert_array_equal(gdal_info(again)["values"], info["values"])
    assert gdal_info(again)["transform"] == info["transform"]
    assert leftovers(tmp_path) == []


def test_cube_to_geotiff_folder_of_years(tmp_path: Path) -> None:
    pytest.importorskip("rasterio")
    cube = make_cube(years=(2019, 2020, 2021), shape=(40, 36), chunks={"y": 16}, clip=True)
    with raise_if_dask_computes(max_computes=1):  # every chunk read once for all years
        folder = export.to_geotiff(cube, tmp_path / "cogs")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["embeddings_2019.tif", "embeddings_2020.tif", "embeddings_2021.tif"]
    for year in (2019, 2020, 2021):
        info = gdal_info(folder / f"embeddings_{year}.tif")
        assert info["descriptions"][63] == "A63" and info["transform"] == north_up_transform(cube)
        np.testing.assert_array_equal(info["values"], cube.embeddings.sel(year=year).values)
    with pytest.raises(FileExistsError, match="mode='w'"):
        export.to_geotiff(cube, folder)
    export.to_geotiff(cube.sel(year=[2020]), folder, mode="w")  # replaces the folder
    assert sorted(p.name for p in folder.iterdir()) == ["embeddings_2020.tif"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a folder of GeoTIFFs"):
        export.to_geotiff(cube, tmp_path / "notes", mode="w")
    assert leftovers(tmp_path) == []


def test_analysis_results_to_geotiff(tmp_path: Path) -> None:
    pytest.importorskip("rasterio")
    cube = make_cube(years=(2020, 2021), shape=(24, 20), clip=True)
    change = cube.embed.change()
    info = gdal_info(export.to_geotiff(change, tmp_path / "change.tif", year=2021))
    assert info["count"] == 1 and info["descriptions"] == ["change"] and np.isnan(info["nodata"])
    np.testing.assert_array_equal(info["values"][0], change.sel(year=2021).values)
    # A 2-D result: no year to choose.
    sim = cube.embed.similarity().sel(year=2021)
    info = gdal_info(sim.embed.to_geotiff(tmp_path / "sim.tif"))
    assert info["descriptions"] == ["similarity"] and info["epsg"] == 32722
    np.testing.assert_array_equal(info["values"][0], sim.values)
    # Classes: int16 with -1 (masked) as nodata.
    classes = cube.embed.kmeans(3)
    info = gdal_info(export.to_geotiff(classes, tmp_path / "classes.tif", year=2020))
    assert info["dtype"] == "int16" and info["nodata"] == -1
    np.testing.assert_array_equal(info["values"][0], classes.sel(year=2020).values)
    # RGBA: four uint8 bands, the fourth is alpha (no data transparent).
    rgba = cube.embed.rgb()
    info = gdal_info(export.to_geotiff(rgba, tmp_path / "rgb.tif", year=2021))
    assert info["dtype"] == "uint8" and info["count"] == 4
    assert info["colorinterp"] == ["red", "green", "blue", "alpha"]
    np.testing.assert_array_equal(
        info["values"], rgba.sel(year=2021).transpose("channel", "y", "x").values
    )
    # Thresholded change: 0/1 bytes.
    flags = cube.embed.change(threshold=0.2)
    info = gdal_info(export.to_geotiff(flags, tmp_path / "flags.tif", year=2021))
    assert info["dtype"] == "uint8"
    np.testing.assert_array_equal(info["values"][0], flags.sel(year=2021).values.astype(np.uint8))


def test_geotiff_errors(tmp_path: Path) -> None:
    pytest.importorskip("rasterio")
    cube = make_cube(years=(2020, 2021), shape=(8, 8))
    with pytest.raises(ValueError, match=r"2019.*\[2020, 2021\]"):
        export.to_geotiff(cube, tmp_path / "a.tif", year=2019)
    sim = cube.embed.similarity().sel(year=2021)
    with pytest.raises(ValueError, match="no year"):
        export.to_geotiff(sim, tmp_path / "a.tif", year=2021)
    with pytest.raises(SchemaError, match="write_crs"):
        export.to_geotiff(sim.drop_vars("spatial_ref"), tmp_path / "a.tif")
    pairs = cube.embed.pairwise_similarity()
    with pytest.raises(ValueError, match="year_2"):
        export.to_geotiff(pairs.expand_dims(site=[1]), tmp_path / "a.tif", year=2021)
    with pytest.raises(TypeError, match=r"ds\['coverage'\]"):
        export.to_geotiff(cube[["coverage"]], tmp_path / "a.tif")
    with pytest.raises(RuntimeError, match="simulated failure"):
        export.to_geotiff(failing_cube(), tmp_path / "fail")
    (tmp_path / "a.tif").write_text("old")
    with pytest.raises(FileExistsError):
        export.to_geotiff(cube, tmp_path / "a.tif", year=2020)
    assert (tmp_path / "a.tif").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]
