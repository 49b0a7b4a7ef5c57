"""Evaluates an Earth Engine expression graph into the fake's values.

:class:`Evaluator` walks one serialized graph (``{"result": id, "values":
{...}}``) and calls a ``fn_<Function_name>`` method per supported function
(:data:`~xembed.testing.fake_earthengine.model.SUPPORTED_FUNCTIONS`);
:func:`encode` turns the result into ``value:compute`` JSON.
"""

from __future__ import annotations

import base64
import datetime as _dt
import re
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import shapely

from xembed._util import transformer
from xembed.schema import COLLECTION
from xembed.testing.earthengine.model import (
    SUPPORTED_FUNCTIONS,
    ApiError,
    Band,
    Collection,
    Constant,
    Date,
    DateRange,
    File,
    Filter,
    Function,
    Geometry,
    Image,
    Reducer,
    Source,
    Unmask,
    Unsupported,
)

_MS_PER_DAY = 86_400_000


def _millis(value: Any) -> float:
    """Milliseconds since 1970 of a date given as ms, an ISO string or a Date."""
    if isinstance(value, Date):
        return value.millis
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=_dt.UTC)
        return parsed.timestamp() * 1000.0
    raise ApiError(400, f"cannot interpret {value!r} as a date")


class CollectionServer(Protocol):
    """What the evaluator asks of the server: the collection and shared caches.

    :class:`~xembed.testing.fake_earthengine.server.FakeEarthEngine` is one;
    the caches outlive a request, as every request re-sends the whole graph.
    """

    def collection(self) -> Collection: ...

    def mosaic(self, files: tuple[File, ...], names: tuple[str, ...]) -> Image: ...

    def cached(self, key: Any) -> Any: ...

    def cache(self, key: Any, value: Any) -> None: ...


class Evaluator:
    """Evaluates one serialized expression graph (``{"result": id, "values": {...}}``)."""

    def __init__(self, server: CollectionServer, values: Mapping[str, Any]) -> None:
        self.server = server
        self.values = values
        self.cache: dict[str, Any] = {}

    def reference(self, ref: str, scope: Mapping[str, Any]) -> Any:
        # Only closed (argument-free) subgraphs are cached: function bodies
        # depend on their arguments.
        if not scope and ref in self.cache:
            return self.cache[ref]
        try:
            node = self.values[ref]
        except KeyError:
            raise ApiError(400, f"expression refers to missing value {ref!r}") from None
        value = self.node(node, scope)
        if not scope:
            self.cache[ref] = value
        return value

    def node(self, node: Any, scope: Mapping[str, Any]) -> Any:
        if not isinstance(node, Mapping) or len(node) != 1:
            raise ApiError(400, f"malformed expression node {node!r}")
        ((kind, body),) = node.items()
        if kind == "constantValue":
            return body
        if kind == "integerValue":
            return int(body)
        if kind == "bytesValue":
            return base64.b64decode(body)
        if kind == "valueReference":
            return self.reference(body, scope)
        if kind == "argumentReference":
            try:
                return scope[body]
            except KeyError:
                raise ApiError(400, f"unbound function argument {body!r}") from None
        if kind == "arrayValue":
            return [self.node(v, scope) for v in body.get("values", [])]
        if kind == "dictionaryValue":
            return {k: self.node(v, scope) for k, v in body.get("values", {}).items()}
        if kind == "functionDefinitionValue":
            return Function(tuple(body.get("argumentNames", ())), body["body"], dict(scope))
        if kind == "functionInvocationValue":
            args = {k: self.node(v, scope) for k, v in body.get("arguments", {}).items()}
            if "functionReference" in body:
                function = self.reference(body["functionReference"], scope)
                return self.call_function(function, list(args.values()), args)
            return self.invoke(body["functionName"], args)
        raise ApiError(400, f"unknown expression node kind {kind!r}")

    def call_function(self, function: Any, positional: list[Any], named: Mapping[str, Any]) -> Any:
        if not isinstance(function, Function):
            raise ApiError(400, f"{function!r} is not a function")
        scope = dict(function.scope)
        if named and set(named) <= set(function.argument_names):
            scope.update(named)
        else:
            scope.update(zip(function.argument_names, positional, strict=False))
        return self.reference(function.body, scope)

    def invoke(self, name: str, args: Mapping[str, Any]) -> Any:
        if name not in SUPPORTED_FUNCTIONS:
            raise Unsupported(name)
        handler = getattr(self, "fn_" + name.replace(".", "_"))
        return handler(**args)

    # ----------------------------------------------------------------- collections

    def fn_ImageCollection_load(self, id: str, version: Any = None) -> Collection:
        if id != COLLECTION:
            raise ApiError(
                404,
                f"ImageCollection asset {id!r} not found: xembed's fake Earth Engine serves "
                f"only {COLLECTION!r}",
            )
        return self.server.collection()

    def fn_ImageCollection_fromImages(self, images: list[Any]) -> Collection:
        return Collection(tuple(as_image(i) for i in images))

    def fn_ImageCollection_mosaic(self, collection: Collection) -> Image:
        images = _as_collection(collection).images
        if not images:
            return Image(())  # Earth Engine: the mosaic of nothing has no bands
        first = images[0].bands
        sources = [(b.name, b.pixels) for b in first]
        for image in images[1:]:
            # Collection images share band order (A00..A63 from band 0 up).
            if len(image.bands) != len(first) or image.bands[0].name != first[0].name:
                raise ApiError(400, "the fake mosaics only images with identical band names")
        if not all(isinstance(p, Source) and len(p.files) == 1 for _, p in sources):
            raise ApiError(400, "the fake mosaics only images of the collection itself")
        files = tuple(f for image in images for f in image.bands[0].pixels.files)
        return self.server.mosaic(files, tuple(name for name, _ in sources))

    def fn_Collection_filter(self, collection: Collection, filter: Filter) -> Collection:
        collection = _as_collection(collection)
        key = None
        if collection.key is not None and filter.key is not None:
            key = ("filter", collection.key, filter.key)
            cached = self.server.cached(key)
            if cached is not None:
                return cached
        kept = tuple(i for i in collection.images if filter.test(i))
        result = Collection(kept, collection.properties, key)
        if key is not None:
            self.server.cache(key, result)
        return result

    def fn_Collection_size(self, collection: Collection) -> int:
        return len(_as_collection(collection).images)

    def fn_Collection_first(self, collection: Collection) -> Image | None:
        images = _as_collection(collection).images
        return images[0] if images else None

    def fn_Collection_toList(
        self, collection: Collection, count: int, offset: int = 0
    ) -> list[Image]:
        images = _as_collection(collection).images
        return list(images[int(offset) : int(offset) + int(count)])

    def fn_Collection_iterate(
        self, collection: Collection, function: Function, first: Any = None
    ) -> Any:
        state = first
        for image in _as_collection(collection).images:
            state = self.call_function(function, [image, state], {})
        return state

    def fn_Collection_reduceColumns(
        self,
        collection: Collection,
        reducer: Reducer,
        selectors: list[str],
        weightSelectors: Any = None,
    ) -> dict[str, Any]:
        if reducer.kind != "toList" or reducer.count != len(selectors) or weightSelectors:
            raise ApiError(
                400, "the fake reduces columns only with toList().repeat(len(selectors))"
            )
        columns: list[list[Any]] = [[] for _ in selectors]
        for image in _as_collection(collection).images:
            row = [image.properties.get(s) for s in selectors]
            # Earth Engine skips rows with a missing input (mosaics have no
            # system:id, so Xee gets empty lists and labels time 0..n-1).
            if any(v is None for v in row):
                continue
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        if reducer.count == 1:
            return {"list": columns[0]}
        return {"list": columns}

    def fn_Reducer_toList(self, tupleSize: Any = None, numOptional: Any = None) -> Reducer:
        return Reducer("toList", 1)

    def fn_Reducer_repeat(self, reducer: Reducer, count: int) -> Reducer:
        return Reducer(reducer.kind, reducer.count * int(count))

    # ----------------------------------------------------------------- elements, values

    def fn_Element_set(self, object: Any, key: str, value: Any) -> Any:
        if isinstance(object, Image):
            return Image(
                object.bands,
                {**object.properties, key: _plain(value)},
                object.native,
                object.footprint,
            )
        if isinstance(object, Collection):
            return Collection(object.images, {**object.properties, key: _plain(value)})
        raise ApiError(400, f"Element.set on {type(object).__name__} is not supported")

    def fn_Element_toDictionary(self, element: Any, properties: Any = None) -> dict[str, Any]:
        props = dict(element.properties)
        if properties is not None:
            return {k: props[k] for k in properties if k in props}
        return {k: v for k, v in props.items() if not k.startswith("system:")}

    def fn_Dictionary_get(
        self, dictionary: Mapping[str, Any], key: str, defaultValue: Any = None
    ) -> Any:
        if key in dictionary:
            return dictionary[key]
        if defaultValue is not None:
            return defaultValue
        raise ApiError(400, f"Dictionary.get: key {key!r} not found in {sorted(dictionary)}")

    def fn_List_slice(
        self, list: list[Any], start: int, end: Any = None, step: Any = None
    ) -> list[Any]:
        return list[slice(start, end, step)]

    def fn_Date(self, value: Any, timeZone: Any = None) -> Date:
        if timeZone not in (None, "UTC"):
            raise ApiError(400, f"the fake supports dates in UTC only, got {timeZone!r}")
        return Date(_millis(value))

    def fn_DateRange(self, start: Any, end: Any = None, timeZone: Any = None) -> DateRange:
        if timeZone not in (None, "UTC"):
            raise ApiError(400, f"the fake supports dates in UTC only, got {timeZone!r}")
        begin = _millis(start)
        return DateRange(begin, begin + _MS_PER_DAY if end is None else _millis(end))

    # ----------------------------------------------------------------- filters, geometry

    def fn_Filter_dateRangeContains(
        self,
        leftValue: Any = None,
        rightField: Any = None,
        **other: Any,
    ) -> Filter:
        if not isinstance(leftValue, DateRange) or rightField is None or other:
            raise ApiError(
                400, "the fake supports Filter.dateRangeContains(leftValue=range, rightField=...)"
            )
        window = leftValue

        def test(image: Image) -> bool:
            t = image.properties.get(rightField)
            return t is not None and window.start <= float(t) < window.end

        return Filter(test, ("dateRangeContains", window.start, window.end, rightField))

    def fn_Filter_intersects(
        self,
        leftField: Any = None,
        rightValue: Any = None,
        maxError: Any = None,
        **other: Any,
    ) -> Filter:
        if leftField != ".all" or not isinstance(rightValue, Geometry) or other:
            raise ApiError(
                400, "the fake supports Filter.intersects(leftField='.all', rightValue=geometry)"
            )
        region = rightValue.shape

        def test(image: Image) -> bool:
            return image.footprint is not None and bool(shapely.intersects(image.footprint, region))

        return Filter(test, ("intersects", region.wkb))

    def fn_Feature(self, geometry: Any = None, metadata: Any = None) -> Geometry:
        # filterBounds wraps its region in a Feature; only the geometry matters.
        if not isinstance(geometry, Geometry):
            raise ApiError(400, "the fake supports Feature(geometry) only as a filter region")
        return geometry

    def fn_Filter_and(self, filters: list[Filter]) -> Filter:
        keys = tuple(f.key for f in filters)
        key = None if any(k is None for k in keys) else ("and", keys)
        return Filter(lambda image: all(f.test(image) for f in filters), key)

    def fn_GeometryConstructors_Rectangle(
        self,
        coordinates: Any,
        crs: Any = None,
        geodesic: Any = None,
        evenOdd: Any = None,
    ) -> Geometry:
        flat = np.asarray(coordinates, dtype=float).ravel()
        if flat.size != 4:
            raise ApiError(400, f"Rectangle needs [west, south, east, north], got {coordinates!r}")
        return Geometry(_to_wgs84(shapely.box(*flat), crs))

    def fn_GeometryConstructors_Polygon(
        self,
        coordinates: Any,
        crs: Any = None,
        geodesic: Any = None,
        maxError: Any = None,
        evenOdd: Any = None,
    ) -> Geometry:
        # One ring [[x, y], ...] or rings [[[x, y], ...], ...] (outer first).
        rings = [coordinates] if isinstance(coordinates[0][0], (int, float)) else coordinates
        return Geometry(_to_wgs84(shapely.Polygon(rings[0], rings[1:]), crs))

    # ----------------------------------------------------------------- images

    def fn_Image_constant(self, value: Any) -> Image:
        values = value if isinstance(value, list) else [value]
        precision = "int" if all(isinstance(v, int) for v in values) else "float"
        names = ["constant"] if len(values) == 1 else [f"constant_{i}" for i in range(len(values))]
        return Image(
            tuple(
                Band(n, Constant(float(v)), precision) for n, v in zip(names, values, strict=True)
            )
        )

    def fn_Image_mask(self, image: Any, mask: Any = None) -> Any:
        # ee.Image() is Image.mask(Image.constant(0), Image.constant(0)): a
        # fully masked constant, the seed of Xee's band stacking.
        image = as_image(image)
        mask_image = as_image(mask) if mask is not None else None
        if mask_image is None or not all(isinstance(b.pixels, Constant) for b in mask_image.bands):
            raise ApiError(400, "the fake supports Image.mask only with a constant mask")
        if any(b.pixels.value != 0 for b in mask_image.bands):
            return image
        if not all(isinstance(b.pixels, Constant) for b in image.bands):
            raise ApiError(400, "the fake masks only constant images")
        bands = tuple(Band(b.name, Constant(0.0, masked=True), b.precision) for b in image.bands)
        return Image(bands, image.properties, image.native, image.footprint)

    def fn_Image_addBands(
        self,
        dstImg: Any,
        srcImg: Any,
        names: Any = None,
        overwrite: Any = False,
    ) -> Image:
        dst, src = as_image(dstImg), as_image(srcImg)
        added = src.bands if names is None else select(src, names)
        bands = list(dst.bands)
        for band in added:
            taken = {b.name for b in bands}
            name = band.name
            if name in taken:
                if overwrite:
                    bands = [b for b in bands if b.name != name]
                else:
                    # Earth Engine keeps both, renaming the newcomer A00_1, A00_2...
                    k = 1
                    while f"{name}_{k}" in taken:
                        k += 1
                    name = f"{name}_{k}"
            bands.append(Band(name, band.pixels, band.precision))
        return Image(tuple(bands), dst.properties, dst.native, dst.footprint)

    def fn_Image_bandNames(self, image: Any) -> list[str]:
        return [b.name for b in as_image(image).bands]

    def fn_Image_select(self, input: Any, bandSelectors: Any, newNames: Any = None) -> Image:
        image = as_image(input)
        bands = select(image, bandSelectors)
        if newNames is not None:
            if len(newNames) != len(bands):
                raise ApiError(400, f"select: {len(newNames)} new names for {len(bands)} bands")
            bands = [Band(n, b.pixels, b.precision) for n, b in zip(newNames, bands, strict=True)]
        return Image(tuple(bands), image.properties, image.native, image.footprint)

    def fn_Image_unmask(self, input: Any, value: Any = None, sameFootprint: Any = True) -> Image:
        image = as_image(input)
        if value is None:
            fill = 0.0
        elif isinstance(value, (int, float)):
            fill = float(value)
        else:
            fill_image = as_image(value)
            if len(fill_image.bands) != 1 or not isinstance(fill_image.bands[0].pixels, Constant):
                raise ApiError(400, "the fake unmasks only with a constant value")
            fill = fill_image.bands[0].pixels.value
        if sameFootprint is not False:
            # True (the default) keeps pixels outside the footprint masked: the
            # fake does not model footprints, so it cannot honour it faithfully.
            raise ApiError(400, "the fake supports Image.unmask only with sameFootprint=False")
        bands = tuple(Band(b.name, Unmask(b.pixels, fill), b.precision) for b in image.bands)
        return Image(bands, image.properties, image.native, image.footprint)


def _plain(value: Any) -> Any:
    if isinstance(value, Date):
        return value.millis
    return value


def as_image(value: Any) -> Image:
    if isinstance(value, Image):
        return value
    if isinstance(value, (int, float)):
        return Image(
            (
                Band(
                    "constant",
                    Constant(float(value)),
                    "int" if isinstance(value, int) else "float",
                ),
            )
        )
    raise ApiError(400, f"expected an Image, got {type(value).__name__}")


def _as_collection(value: Any) -> Collection:
    if isinstance(value, Collection):
        return value
    raise ApiError(400, f"expected an ImageCollection, got {type(value).__name__}")


def select(image: Image, selectors: Any) -> list[Band]:
    selectors = selectors if isinstance(selectors, list) else [selectors]
    chosen: list[Band] = []
    for selector in selectors:
        if isinstance(selector, int):
            try:
                chosen.append(image.bands[selector])
            except IndexError:
                raise ApiError(400, f"band index {selector} out of range") from None
            continue
        pattern = re.compile(str(selector))
        matches = [b for b in image.bands if pattern.fullmatch(b.name)]
        if not matches:
            names = [b.name for b in image.bands]
            raise ApiError(
                400, f"Image.select: pattern {selector!r} did not match any bands: {names}"
            )
        chosen.extend(matches)
    return chosen


def _to_wgs84(shape: shapely.Geometry, crs: Any) -> shapely.Geometry:
    """A geometry given in ``crs`` (a code such as ``"EPSG:32722"``; None: lon/lat)."""
    if crs is None or str(crs).upper() == "EPSG:4326":
        return shape
    if not isinstance(crs, str):
        raise ApiError(400, f"the fake takes geometry CRSs as codes ('EPSG:32722'), not {crs!r}")
    # Straight edges in the source CRS: densify before carrying them to lon/lat.
    dense = shapely.segmentize(shape, max(shape.length / 64, 1e-9))
    to_wgs84 = transformer(crs, "EPSG:4326")
    return shapely.transform(dense, lambda c: np.column_stack(to_wgs84.transform(*c.T)))


# --------------------------------------------------------------------------- JSON results


def encode(value: Any) -> Any:
    """An evaluated value as Earth Engine's value:compute JSON."""
    if isinstance(value, Image):
        return _image_info(value)
    if isinstance(value, Collection):
        return {
            "type": "ImageCollection",
            "bands": [],
            "features": [_image_info(i) for i in value.images],
            "properties": dict(value.properties),
        }
    if isinstance(value, Date):
        return {"type": "Date", "value": value.millis}
    if isinstance(value, Geometry):
        return shapely.geometry.mapping(value.shape)
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (Filter, Reducer, Function, DateRange)):
        raise ApiError(400, f"the fake cannot return a {type(value).__name__} by value")
    return value


def _image_info(image: Image) -> dict[str, Any]:
    if image.native is not None:
        crs, transform, dims = image.native
        grid = {"crs": crs, "crs_transform": list(transform), "dimensions": list(dims)}
    else:
        # Computed images (mosaics) are in Earth Engine's default projection.
        grid = {"crs": "EPSG:4326", "crs_transform": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]}
    bands = [
        {"id": b.name, "data_type": {"type": "PixelType", "precision": b.precision}, **grid}
        for b in image.bands
    ]
    info: dict[str, Any] = {"type": "Image", "bands": bands}
    if image.properties:
        info["properties"] = dict(image.properties)
    return info
