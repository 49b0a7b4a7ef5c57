"""Batch extraction: yearly statistics of many sites into one tidy table.

:func:`extract` is the scale-out twin of
``open_embeddings(site, years).embed.polygon_mean()`` in a loop: it gives the
same numbers (within float rounding) for any number of sites, reads each file
window once for all the sites under it, runs on whatever dask scheduler is
active, survives failing sites, and with ``store=`` resumes after a crash.

How the work is cut
-------------------
Each site gets the grid :func:`xembed.open_embeddings` would give it (its own
UTM zone, the native 10 m lattice). Sites are then *grouped*: same UTM zone,
and the centre of their grid in the same square cell of :data:`GROUP_CELL`
pixels (2.56 km, the default chunk size) of that zone's lattice. A group
opens one lazy cube over the envelope of its sites' grids (``clip=False``)
and reduces all its sites at once: ``"mean"`` with
:func:`xembed.ops.zonal_mean` (one pass; chunks no site touches are never
read), the other statistics per site with :func:`xembed.ops.polygon_mean` on
the site's window of the same cube, in the same dask computation, so each
chunk is read once for every statistic and site. The cell bounds every
envelope to a cell plus the overhang of its sites: far-apart sites never
share a cube, and a cube is lazy, so only chunks under sites are read.

Groups are computed a few at a time (:func:`dask.compute` on the active
scheduler, or futures on a ``dask.distributed`` client) and each finished
group is committed (``store=``) before the next results are awaited.

The table
---------
One row per site, year and statistic: ``site_id, year, stat,
valid_fraction, valid_ha, A00..A63``, float64, sorted by the sites' input
order, then the years in the order given, then ``stats`` in the order
given. ``valid_fraction`` (0..1) and ``valid_ha`` say how much of the site
has data that year (:func:`xembed.ops.polygon_mean`'s coordinates, from the
same pass); site-years below ``min_valid`` are named in one
:class:`xembed.CoverageWarning`, and a site-year without a single valid
pixel is a failure (``attrs["errors"]``, no row). Every statistic, ``"count"``
included, fills the 64 band columns: ``"count"`` is the area with data in
pixels (sum of coverage), the same in every band because the mirror marks
missing data in all bands at once; it is kept per band so that the table
stays rectangular and equals :func:`xembed.ops.polygon_mean` band by band.

The store
---------
``store=PATH`` is a folder that ``pandas.read_parquet(PATH)`` (pyarrow)
reads as one Parquet dataset::

    PATH/_xembed_extract.json     what the store holds: years, stats, source, format
    PATH/part-<hash>.parquet      one committed group: its sites' finished rows
    PATH/_errors.parquet          failures of the last run (information only)

A part is written to a hidden temporary name (``.part-...tmp``), flushed to
disk and renamed into place with :func:`os.replace`, so a part file either
holds a whole group or does not exist; names starting with ``.`` or ``_``
are never read back as data (pyarrow ignores them too). A site is *done*
when a part holds it with the same geometry (parts carry a ``site_hash``
column); only sites with no failure at all are committed, so failed sites
(and sites with a failed year) are tried again on every run. A re-run
groups all the sites exactly as before and recomputes only groups with a
site not done, so the final table is identical, bit for bit, to an
uninterrupted run's. Two processes must not write one store at once.

The modules
-----------
:mod:`~xembed.batch.plan` groups the sites (pure geometry),
:mod:`~xembed.batch.run` builds each group's lazy computation and runs the
groups, :mod:`~xembed.batch.store` commits them, :mod:`~xembed.batch.table`
puts the table and its errors together.
"""

from xembed.batch.areas import class_areas
from xembed.batch.plan import (
    GROUP_CELL,
    MAX_GROUP_CELLS,
    MAX_GROUP_PIXELS,
    Group,
    Lattice,
    group_sites,
    mirror_lattice,
)
from xembed.batch.run import extract
from xembed.batch.sample import sample
from xembed.batch.store import STORE_FORMAT

__all__ = [
    "GROUP_CELL",
    "MAX_GROUP_CELLS",
    "MAX_GROUP_PIXELS",
    "STORE_FORMAT",
    "Group",
    "Lattice",
    "class_areas",
    "extract",
    "group_sites",
    "mirror_lattice",
    "sample",
]
