"""Rendering: frames, strips, GIFs and figures, read back and checked pixel by pixel."""

from __future__ import annotations

import os

import imageio.v3 as iio
import numpy as np
import pytest
import shapely
import xarray as xr

import xembed
from xembed import render as R
from xembed.grid import project
from xembed.testing import make_cube

CHECKER = {tuple(c) for c in R.NODATA_CHECKER}


def checker_fraction(frame: np.ndarray) -> float:
    """Share of pixels painted in one of the two no-data greys."""
    flat = frame.reshape(-1, 3)
    hits = np.zeros(len(flat), dtype=bool)
    for colour in CHECKER:
        hits |= (flat == colour).all(axis=1)
    return float(hits.mean())


def changed_box(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1) of the pixels where two frames differ."""
    rows, cols = np.nonzero((a != b).any(axis=-1))
    assert rows.size, "the frames are identical"
    return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())


@pytest.fixture(scope="module")
def cube() -> xr.Dataset:
    return make_cube(years=(2020, 2021, 2022), shape=(32, 48))


@pytest.fixture(scope="module")
def context_cube(demo_sites) -> xr.Dataset:
    """The original notebook's view: site 3107 with 500 m around it, not clipped."""
    site = next(s for s in demo_sites if s.id == 3107)
    return xembed.open_embeddings(site, [2020, 2022], buffer=500, clip=False).load()


# --------------------------------------------------------------------------- render


def test_render_shape_dtype_and_png(cube):
    frame = R.render(cube, 2021, dimensions=480)
    assert isinstance(frame, R.Frame) and isinstance(frame, np.ndarray)
    assert frame.shape == (320, 480, 3) and frame.dtype == np.uint8
    png = frame._repr_png_()
    assert np.array_equal(iio.imread(png, extension=".png"), np.asarray(frame))
    assert frame[0, 0]._repr_png_() is None  # a slice is no longer a picture
    assert type(frame.mean()) is np.float64  # reductions are plain numbers


@pytest.mark.parametrize("dimensions", [1, 33, 333, 500, 777])
def test_render_longest_side_is_dimensions(cube, dimensions):
    frame = R.render(cube, 2020, dimensions=dimensions)
    assert max(frame.shape[:2]) == dimensions
    assert abs(frame.shape[1] / frame.shape[0] - 48 / 32) < 2 / min(frame.shape[:2]) + 0.01


def test_nearest_neighbour_blocks_equal_rgb(cube):
    plain = R.render(cube, 2020, dimensions=480, boundary=False, label=False)
    expected = xembed.rgb(cube.sel(year=[2020])).values[0, ..., :3]
    # 10 x enlargement: every 10 x 10 block is one embedding pixel, exactly.
    assert np.array_equal(np.asarray(plain), expected.repeat(10, 0).repeat(10, 1))
    assert R.render(cube, 2020, dimensions=None, boundary=False, label=False).shape == (32, 48, 3)


def test_boundary_drawn_where_the_polygon_is(cube):
    plain = R.render(cube, 2021, dimensions=480, label=False, boundary=False)
    outlined = R.render(cube, 2021, dimensions=480, label=False)  # the cube's own site
    r0, c0, r1, c1 = changed_box(plain, outlined)
    # make_cube's polygon is the grid inset by a quarter: cols 12..36, rows 8..24 (x10 px).
    assert abs(c0 - 120) <= 4 and abs(c1 - 360) <= 4
    assert abs(r0 - 80) <= 4 and abs(r1 - 240) <= 4
    yellow = (np.asarray(outlined) == (255, 230, 0)).all(-1).sum()
    assert yellow > 500  # the line itself, not only its halo
    site = xembed.Site("x", None, shapely.from_wkt(cube.attrs["site_geometry_wkt"]))
    assert np.array_equal(
        R.render(cube, 2021, dimensions=480, label=False, boundary=site), outlined
    )


def test_label_top_left_only(cube):
    plain = R.render(cube, 2021, dimensions=480, boundary=False, label=False)
    labelled = R.render(cube, 2021, dimensions=480, boundary=False)
    r0, c0, r1, c1 = changed_box(plain, labelled)
    assert r0 < 20 and c0 < 20 and r1 < 80 and c1 < 200
    box = np.asarray(labelled)[r0 : r1 + 1, c0 : c1 + 1]
    assert (box.max(axis=-1) > 240).any() and (box.max(axis=-1) < 60).mean() > 0.3  # white on dark
    long = R.render(cube, 2021, dimensions=200, boundary=False, label="x" * 200)
    assert long.shape == (133, 200, 3)  # a long label is shrunk, the frame keeps its size


def test_nodata_is_checkerboard_and_north_is_up(cube):
    clipped = make_cube(years=(2020,), shape=(32, 48), clip=True)
    frame = R.render(clipped, dimensions=480, boundary=False, label=False)
    assert checker_fraction(frame[:60]) == 1.0  # above the polygon: no data
    assert checker_fraction(frame[120:200, 150:330]) == 0.0  # inside it: data
    # A cube stored south-up is drawn north-up, identical to the original.
    flipped = cube.isel(y=slice(None, None, -1))
    assert np.array_equal(R.render(flipped, 2021), R.render(cube, 2021))
    top_gone = cube.assign(embeddings=cube.embeddings.where(cube.y < cube.y[4]))
    assert checker_fraction(R.render(top_gone, 2021, label=False, boundary=False)[:30]) == 1.0


def test_render_rgb_arrays(cube):
    site = xembed.Site("x", None, shapely.from_wkt(cube.attrs["site_geometry_wkt"]))
    from_cube = R.render(cube, 2020, boundary=site)
    assert np.array_equal(R.render(xembed.rgb(cube), 2020, boundary=site), from_cube)
    assert np.array_equal(R.render(cube.embeddings, 2020, boundary=site), from_cube)
    pca = R.render(xembed.pca_rgb(cube), 2020, boundary=site)
    assert pca.shape == from_cube.shape
    assert np.array_equal(R.render(cube.sel(year=2020), boundary=site), from_cube)
    assert np.array_equal(R.render(xembed.rgb(cube).sel(year=2020), boundary=site), from_cube)
    three = xembed.rgb(cube).sel(channel=["r", "g", "b"])
    assert np.array_equal(R.render(three, 2020, boundary=site), from_cube)


def test_render_errors(cube):
    with pytest.raises(ValueError, match=r"several years \[2020, 2021, 2022\]: pass year="):
        R.render(cube)
    with pytest.raises(ValueError, match=r"years \[2019\] are not in the cube"):
        R.render(cube, 2019)
    with pytest.raises(TypeError, match="dimensions must be an int"):
        R.render(cube, 2020, dimensions="400x300")  # type: ignore[arg-type]
    no_crs = xr.DataArray(
        np.zeros((1, 4, 4, 3), np.uint8), dims=("year", "y", "x", "channel"), coords={"year": [1]}
    )
    with pytest.raises(ValueError, match="the cube has no CRS"):
        R.render(no_crs, boundary=shapely.box(0, 0, 1, 1))
    assert R.render(no_crs, dimensions=8).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="must be uint8"):
        R.render(no_crs.astype(float))
    with pytest.raises(TypeError, match="boundary must be"):
        R.render(cube, 2020, boundary=42)


def test_frames_labels_and_one_size(cube):
    out = R.frames(cube, dimensions=96, label="site A · {year}")
    assert len(out) == 3 and {f.shape for f in out} == {(64, 96, 3)}
    same_data = cube.assign(
        embeddings=cube.embeddings.isel(year=[0, 0, 0]).assign_coords(year=cube.year)
    )
    a, b = R.frames(same_data, years=[2020, 2021], dimensions=96, label=lambda y: f"Y{y}")
    *_, r1, c1 = changed_box(a, b)
    assert r1 < 40 and c1 < 96  # identical data: only the label differs
    with pytest.raises(TypeError, match="unexpected arguments"):
        R.frames(cube, colour="red")


def test_context_view_500m_buffer(context_cube, demo_sites):
    """The notebook's default view: the site, 500 m around it, no clipping, boundary inside."""
    site = next(s for s in demo_sites if s.id == 3107)
    frame = R.render(context_cube, 2022, dimensions=500)
    assert max(frame.shape[:2]) == 500 and checker_fraction(frame) < 0.001  # all data
    plain = R.render(context_cube, 2022, dimensions=500, boundary=False, label=False)
    polygon = project(site.geometry, "EPSG:4326", context_cube.rio.crs)
    x0, y0, x1, y1 = polygon.bounds
    west, north = float(context_cube.x[0]) - 5, float(context_cube.y[0]) + 5
    scale = frame.shape[1] / (context_cube.sizes["x"] * 10.0)
    r0, c0, r1, c1 = changed_box(plain, R.render(context_cube, 2022, dimensions=500, label=False))
    assert abs(c0 - (x0 - west) * scale) < 5 and abs(c1 - (x1 - west) * scale) < 5
    assert abs(r0 - (north - y1) * scale) < 5 and abs(r1 - (north - y0) * scale) < 5
    margin = 500 * scale  # 500 m of context on every side
    assert c0 > margin - 5 and r0 > margin - 5
    # clip=True with buffer= keeps the 500 m of context (issue 12, item 4): only what
    # lies beyond 500 m of the polygon (the grid's rounded-off corners) is masked.
    clipped = xembed.open_embeddings(site, [2022], buffer=500)
    assert 0.001 < checker_fraction(R.render(clipped, dimensions=500)) < 0.2


# --------------------------------------------------------------------------- files


def test_save_strip_reads_back(cube, tmp_path):
    out = R.frames(cube, dimensions=96)
    path = R.save_strip(out, tmp_path / "sub" / "strip.png", gap=6)
    assert path == tmp_path / "sub" / "strip.png" and path.is_file()
    strip = iio.imread(path)
    assert strip.shape == (64, 3 * 96 + 2 * 6, 3) and strip.dtype == np.uint8
    assert np.array_equal(strip[:, :96], out[0]) and np.array_equal(strip[:, -96:], out[2])
    assert (strip[:, 96:102] == 255).all()  # the white gap
    mixed = R.save_strip([out[0], np.zeros((10, 5, 4), np.uint8)], tmp_path / "mixed.png")
    assert iio.imread(mixed).shape == (64, 96 + 8 + 5, 3)
    assert sorted(os.listdir(tmp_path)) == ["mixed.png", "sub"]  # no temporary files left


def test_save_gif_reads_back(cube, tmp_path):
    out = R.frames(cube, dimensions=96)
    path = R.save_gif(out, tmp_path / "years.gif", duration_ms=250)
    movie = iio.imread(path, index=None)
    assert movie.shape == (3, 64, 96, 3) and movie.dtype == np.uint8
    meta = iio.immeta(path)
    assert meta["duration"] == 250 and meta["loop"] == 0
    # GIF's 256-colour palette: close to the frames, not exact.
    assert np.abs(movie.astype(int) - np.stack(out).astype(int)).mean() < 8


def test_failed_write_leaves_nothing(cube, tmp_path, monkeypatch):
    out = R.frames(cube, dimensions=32)
    R.save_strip(out, tmp_path / "keep.png")
    before = (tmp_path / "keep.png").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(iio, "imwrite", boom)
    with pytest.raises(OSError, match="disk full"):
        R.save_strip(out, tmp_path / "keep.png")
    with pytest.raises(OSError, match="disk full"):
        R.save_gif(out, tmp_path / "new.gif")
    assert os.listdir(tmp_path) == ["keep.png"] and (tmp_path / "keep.png").read_bytes() == before


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        R.save_strip([], tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"frame 1 has shape \(4, 4\, 2\)"):
        R.save_strip(
            [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 2), np.uint8)], tmp_path / "a.png"
        )
    with pytest.raises(ValueError, match="frame 0 is float64"):
        R.save_gif([np.zeros((4, 4, 3))], tmp_path / "a.gif")
    with pytest.raises(IsADirectoryError):
        R.save_strip([np.zeros((4, 4, 3), np.uint8)], tmp_path)


# --------------------------------------------------------------------------- figures


def figure_png(fig, tmp_path, name):
    path = tmp_path / name
    fig.savefig(path)
    return iio.imread(path)


def test_plot_similarity_matrix(cube, tmp_path):
    import pandas as pd
    from matplotlib import _pylab_helpers

    managers = _pylab_helpers.Gcf.get_num_fig_managers()
    sim = xembed.similarity_matrix(cube)
    fig = R.plot_similarity_matrix(sim)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2020", "2021", "2022"]
    assert len(ax.texts) == 9 and len(fig.axes) == 2  # values and a colour bar
    png = figure_png(fig, tmp_path, "sim.png")
    width, height = (fig.get_size_inches() * fig.dpi).round().astype(int)
    assert png.shape[:2] == (height, width)
    assert fig._repr_png_().startswith(b"\x89PNG")
    table = pd.DataFrame(sim.values, index=[2020, 2021, 2022], columns=[2020, 2021, 2022])
    assert len(R.plot_similarity_matrix(table).axes[0].texts) == 9
    raw = R.plot_similarity_matrix(xembed.similarity_matrix(cube, normalize=False))
    assert "not normalised" in raw.axes[0].get_title()
    assert _pylab_helpers.Gcf.get_num_fig_managers() == managers  # no pyplot figures


def test_plot_change(context_cube, tmp_path):
    change = xembed.change(context_cube, 2020)
    fig = R.plot_change(change, 2022, boundary=context_cube, threshold=0.3)
    ax = fig.axes[0]
    assert len(fig.axes) == 2 and ax.get_title() == "Change 2020 → 2022 (1 − cosine)"
    assert ax.get_xlim() == pytest.approx(
        (float(context_cube.x[0]) - 5, float(context_cube.x[-1]) + 5)
    )
    assert len(ax.lines) >= 1 and ax.collections  # boundary and threshold contour
    png = figure_png(fig, tmp_path, "change.png")
    assert png.shape[:2] == tuple((fig.get_size_inches()[::-1] * fig.dpi).round().astype(int))
    flags = xembed.change(context_cube, 2020, threshold=0.3)
    binary = R.plot_change(flags, 2022)
    assert "Changed since 2020" in binary.axes[0].get_title()
    with pytest.raises(ValueError, match="pass year="):
        R.plot_change(change)


def test_plot_facets(cube, tmp_path):
    fig = R.plot(cube, col_wrap=2)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["2020", "2021", "2022"]
    assert len(fig.axes) == 4 and visible[0].lines  # a hidden 4th panel; boundaries drawn
    assert figure_png(fig, tmp_path, "facets.png").ndim == 3


def labels_outside(fig) -> list[str]:
    """Tick labels, axis labels and titles drawn (partly) outside the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        for axis, coord in ((ax.xaxis, 0), (ax.yaxis, 1)):
            low, high = sorted(axis.get_view_interval())
            # Labels of ticks beyond the axis ends exist but are not drawn.
            texts += [
                label
                for label in axis.get_ticklabels()
                if low - 1e-9 * abs(high - low)
                <= label.get_position()[coord]
                <= high + 1e-9 * abs(high - low)
            ]
        texts += [ax.xaxis.label, ax.yaxis.label, ax.title]
    out = []
    for text in texts:
        if not text.get_visible() or not text.get_text():
            continue
        box = text.get_window_extent(renderer)
        if (
            box.x0 < frame.x0 - 0.5
            or box.x1 > frame.x1 + 0.5
            or box.y0 < frame.y0 - 0.5
            or (box.y1 > frame.y1 + 0.5)
        ):
            out.append(text.get_text())
    return out


@pytest.mark.parametrize("low", [0.4, 0.9, 0.99])
@pytest.mark.parametrize("n", [3, 8, 12])
def test_similarity_heatmap_labels_stay_inside(low, n, tmp_path):
    """Issue 12 item 14: a two-decimal colour bar cut the year labels to '017'."""
    years = list(range(2025 - n, 2025))
    values = np.full((n, n), low + (1 - low) * 0.2)
    values[0, -1] = values[-1, 0] = low
    np.fill_diagonal(values, 1.0)
    sim = xr.DataArray(values, dims=("year", "year_2"), coords={"year": years, "year_2": years})
    fig = R.plot_similarity_matrix(sim)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(y) for y in years]
    assert labels_outside(fig) == []
    assert len(fig.axes[1].get_yticklabels()) >= 3  # the colour bar has a scale
    figure_png(fig, tmp_path, f"sim_{low}_{n}.png")


def test_similarity_heatmap_long_labels_stay_inside():
    values = np.full((8, 8), 0.95)
    np.fill_diagonal(values, 1.0)
    labels = [f"restoration plot {year}" for year in range(2017, 2025)]
    fig = R.plot_similarity_matrix(values, labels=labels)
    assert labels_outside(fig) == []


def test_plot_search(context_cube, demo_sites, tmp_path):
    """Issue 12 item 15: search results had to go through plot_change ("change" colour bar)."""
    site = next(s for s in demo_sites if s.id == 3107)
    hits = xembed.search(context_cube, site.geometry, year=2022)
    fig = R.plot_search(hits, 2022, boundary=site, threshold=0.9)
    ax, bar = fig.axes
    assert ax.get_title() == "Similarity search 2022: cosine with the query"
    assert bar.get_ylabel() == "cosine similarity with the query"
    assert "change" not in bar.get_ylabel() + ax.get_title()
    assert bar.get_ylim()[1] == pytest.approx(1.0)  # bright = most similar, up to 1
    assert ax.collections and len(ax.lines) >= 1  # threshold contour, boundary
    assert labels_outside(fig) == []
    png = figure_png(fig, tmp_path, "search.png")
    assert png.shape[:2] == tuple((fig.get_size_inches()[::-1] * fig.dpi).round().astype(int))
    one = R.plot_search(hits.sel(year=2020), title="Looks like the site")
    assert one.axes[0].get_title() == "Looks like the site"
    with pytest.raises(TypeError, match=r"xembed\.search"):
        R.plot_search(hits.values)
    with pytest.raises(ValueError, match="pass year="):
        R.plot_search(hits)


@pytest.mark.parametrize("shape", [(51, 34), (100, 20), (20, 100)])
def test_maps_keep_their_labels_inside(shape):
    """A tall map lost its y label off the left edge (the heat-map's layout bug)."""
    cube = make_cube(years=(2020, 2021), shape=shape)
    query = cube.embeddings.isel(year=0, y=0, x=0).values
    assert labels_outside(R.plot_change(cube.embed.change(), 2021)) == []
    assert labels_outside(R.plot_search(cube.embed.search(query), 2021)) == []
