"""The :class:`Site`: an id, a start year, a lon/lat polygon and other attributes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon

from xembed.errors import SiteError
from xembed.sites.clean import clean_geometry, to_id, to_year


@dataclass(frozen=True, repr=False)
class Site:
    """One site: an id, a start year and a polygon in EPSG:4326 lon/lat.

    Construction validates and normalises the fields, so every ``Site`` is
    safe to build a cube for: numpy and integral float ids/years (as pandas
    produces them) become ``int``, a missing year (``NaN``) becomes ``None``,
    Z coordinates are dropped and an invalid polygon is repaired with
    :func:`shapely.make_valid` (with a ``UserWarning``).

    Parameters
    ----------
    id : int or str
        The site's identifier (unique within a collection of sites).
    start_year : int or None
        Year the restoration (or whatever happened at the site) started.
    geometry : shapely.Polygon or shapely.MultiPolygon
        Site boundary, longitude/latitude in EPSG:4326.
    properties : Mapping, optional
        Other attributes, copied into a plain ``dict``.

    Raises
    ------
    SiteError
        If the geometry is missing, empty, not polygonal, has NaN or infinite
        coordinates, cannot be repaired or is not in lon/lat range, or if the
        id (e.g. one holding a NUL character) or year is not usable.

    Examples
    --------
    >>> from shapely.geometry import box
    >>> site = Site(3107, 2016.0, box(-48.0, -22.6, -47.99, -22.59), {"name": "Fazenda"})
    >>> site
    Site(id=3107, start_year=2016)
    >>> site.geometry.bounds
    (-48.0, -22.6, -47.99, -22.59)
    >>> site.properties["name"]
    'Fazenda'
    """

    id: int | str
    start_year: int | None
    geometry: Polygon | MultiPolygon
    properties: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Frozen dataclass: normalised values are stored with object.__setattr__.
        site_id = to_id(self.id)
        object.__setattr__(self, "id", site_id)
        object.__setattr__(self, "start_year", to_year(self.start_year, site_id))
        object.__setattr__(self, "geometry", clean_geometry(self.geometry, site_id))
        if not isinstance(self.properties, Mapping):
            raise SiteError(
                f"site {site_id!r}: properties must be a mapping (dict), "
                f"got {type(self.properties).__name__}"
            )
        # A private copy, so mutating the caller's dict cannot change the site.
        object.__setattr__(self, "properties", dict(self.properties))

    def __repr__(self) -> str:
        return f"Site(id={self.id!r}, start_year={self.start_year!r})"

    # eq compares the properties dict too, which is unhashable; hashing a
    # subset of the compared fields keeps ``a == b`` => ``hash(a) == hash(b)``.
    def __hash__(self) -> int:
        return hash((self.id, self.start_year, self.geometry))

    @property
    def __geo_interface__(self) -> dict[str, Any]:
        """The site as a GeoJSON Feature (``as_site`` turns it back into an equal Site).

        Examples
        --------
        >>> from shapely.geometry import box
        >>> feature = Site("a", None, box(0, 0, 1, 1)).__geo_interface__
        >>> feature["id"], feature["properties"], feature["geometry"]["type"]
        ('a', {'start_year': None}, 'Polygon')
        """
        return {
            "type": "Feature",
            "id": self.id,
            "properties": {**self.properties, "start_year": self.start_year},
            "geometry": shapely.geometry.mapping(self.geometry),
        }
