"""Ways in: each returns the same ``(year, band, y, x)`` cube.

- :mod:`xembed.sources.cog`: the public Cloud-Optimized GeoTIFF mirror;
- :mod:`xembed.sources.sample`: the bundled demo data, in the mirror's format;
- :mod:`xembed.sources.mirror`: writing the mirror's format.
"""
