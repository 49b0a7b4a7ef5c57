"""``sample`` and ``classify``: learning from labelled points on the command line."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from xembed.cli.common import (
    UsageError,
    add_common,
    atomic_table,
    each_site,
    open_site,
    parse_years,
    sites_of,
    source_kwargs,
    table_path,
)

_MODELS = ("knn", "forest")


def _read_points(path: str, what: str) -> Any:
    """A vector file of points (any CRS geopandas reads) as a GeoDataFrame."""
    import geopandas as gpd

    if not Path(path).exists():
        raise UsageError(f"{what} file {path!r} does not exist")
    try:
        frame = gpd.read_file(path)
    except Exception as err:
        raise UsageError(f"cannot read {what} file {path!r}: {err}") from err
    if frame.crs is None:
        frame = frame.set_crs("EPSG:4326")  # GeoJSON without a crs member: lon/lat
    return frame


def _sample_table(args: argparse.Namespace, points: Any, years: list[int]) -> Any:
    """:func:`xembed.sample`, bad arguments as usage errors, failures reported on stderr."""
    import xembed

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"xembed\.sample: \d+ of ", UserWarning)
            return xembed.sample(
                points,
                years,
                **source_kwargs(args),
                store=getattr(args, "store", None),
                progress=not args.quiet,
            )
    except (xembed.XembedError, ValueError) as err:
        raise UsageError(str(err)) from err


def _report_errors(command: str, errors: Any) -> int:
    for row in errors.itertuples():
        print(f"xembed {command}: point {row.point}: {row.error}", file=sys.stderr)
    return 1 if len(errors) else 0


def _sample(args: argparse.Namespace) -> int:
    """The embeddings at every point of ``POINTS`` and year, one table (see xembed.sample)."""
    out = table_path(args.out)
    table = _sample_table(args, _read_points(args.points, "points"), parse_years(args.years))
    errors = table.attrs["errors"]
    table.attrs = {}  # pandas cannot write a DataFrame held in attrs to Parquet
    atomic_table(table, out)
    print(f"wrote {out} ({len(table)} rows, {table.shape[1]} columns)")
    return _report_errors("sample", errors)


def _model(name: str) -> Any:
    from xembed.ops.learn import import_sklearn

    if name == "forest":
        return import_sklearn("ensemble").RandomForestClassifier(n_estimators=100, random_state=0)
    return import_sklearn("neighbors").KNeighborsClassifier(n_neighbors=3)


def _fit(args: argparse.Namespace, years: list[int]) -> Any:
    """The model fitted once on the training points sampled over the whole region."""
    training = _read_points(args.training, "training")
    if args.label not in training.columns:
        raise UsageError(
            f"--label {args.label!r} is not a column of {args.training!r}; it has "
            f"{[c for c in training.columns if c != training.geometry.name]}"
        )
    train_years = parse_years(args.training_years) if args.training_years else years
    table = _sample_table(args, training[[args.label, training.geometry.name]], train_years)
    rows = table.dropna(subset=["A00"])
    if rows.empty:
        raise UsageError(f"no training point of {args.training!r} has data in {train_years}")
    if _report_errors("classify", table.attrs["errors"]):
        raise UsageError("some training points could not be read (listed above)")
    model = _model(args.model)
    from xembed.schema import BANDS

    return model.fit(rows[list(BANDS)].to_numpy(), rows[args.label].to_numpy())


def _classify(args: argparse.Namespace) -> int:
    """Fit one model on the labelled points; per site a class map (GeoTIFFs) and class areas.

    The training points are sampled once over the region (:func:`xembed.sample`)
    and one model is fitted on them (default ``KNeighborsClassifier(3)``, as
    :func:`xembed.ops.learn.classify`); each site's map is
    :func:`xembed.ops.learn.predict` of it on the site's cube, measured with
    :func:`xembed.ops.learn.class_area`.
    """
    import pandas as pd

    from xembed.export import to_geotiff
    from xembed.ops.learn import class_area, predict

    years = parse_years(args.years)
    out = Path(args.out)
    if out.suffix:
        raise UsageError(f"--out {args.out!r} is a folder for GeoTIFFs and class_area.csv")
    sites = sites_of(args)
    model = _fit(args, years)
    out.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    frames = []

    def work(site: Any) -> Any:
        cube = open_site(site, args)
        classes = predict(cube, model).rename("classes").compute()
        to_geotiff(classes, out / str(site.id), mode="w")
        return class_area(cube, classes)

    for site, areas in each_site(args, sites, work, "classify", failed):
        frames.append(areas.assign(site_id=site.id)[["site_id", *areas.columns]])
    if frames:
        atomic_table(pd.concat(frames, ignore_index=True), out / "class_area.csv")
    print(f"wrote class maps of {len(frames)} sites and class_area.csv to {out}")
    for line in failed:
        print(f"xembed classify: {line}", file=sys.stderr)
    return 1 if failed else 0


def add_sample(sub: Any) -> None:
    p = sub.add_parser(
        "sample",
        help="embeddings at labelled points: one row per point and year",
        description="The embeddings at every point of POINTS (a GeoJSON/GeoPackage of points, "
        "any CRS) and year; the points' other columns are kept. Points sharing files share "
        "reads; with --store, resumable.",
    )
    p.add_argument("points", metavar="POINTS", help="vector file of points (any CRS)")
    p.add_argument("--years", required=True, help="e.g. 2018-2024 or 2018,2020")
    p.add_argument("--out", required=True, help="output table (.csv or .parquet)")
    p.add_argument("--source", default="sample", help="sample (default), cog or a mirror folder")
    p.add_argument("--root", help="mirror location for --source cog/sample (folder or URL)")
    p.add_argument("--project", help=argparse.SUPPRESS)
    p.add_argument("--store", help="folder to commit finished groups to (resumable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_sample)


def add_classify(sub: Any) -> None:
    p = sub.add_parser(
        "classify",
        help="class maps of every site from labelled points (GeoTIFFs + class areas)",
        description="Sample the labelled --training points, fit one classifier, map each "
        "site's classes per year (OUT/SITE_ID/classes_YEAR.tif) and write OUT/class_area.csv "
        "(site_id, year, class, ha, fraction).",
    )
    add_common(p, out="output folder")
    p.add_argument("--training", required=True, help="vector file of labelled points")
    p.add_argument("--label", required=True, help="the column of --training holding the class")
    p.add_argument(
        "--training-years", help="years the labels hold for (default: --years)", default=None
    )
    p.add_argument("--model", choices=_MODELS, default="knn", help="knn (3 neighbours) or forest")
    p.set_defaults(func=_classify)
