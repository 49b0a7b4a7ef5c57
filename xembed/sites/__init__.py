"""Sites: the polygons xembed builds cubes for, and how to load them.

A :class:`Site` is an id, an optional restoration start year, a
Polygon/MultiPolygon in EPSG:4326 lon/lat and a dict of other attributes.
:func:`load_sites` reads them from GeoJSON (including the legacy ``"crs"``
member), GeoPackage, Shapefile, GeoDataFrames and GeoJSON mappings;
:func:`as_site` turns one geometry, Feature or Site into a :class:`Site`.
"""

from xembed.sites.clean import check_distinct_as_text
from xembed.sites.read import ID_FIELDS, as_site, as_sites, load_sites
from xembed.sites.site import Site

__all__ = ["ID_FIELDS", "Site", "as_site", "as_sites", "check_distinct_as_text", "load_sites"]
