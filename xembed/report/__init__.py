"""A static HTML report of many sites, for people without Python: :func:`report`.

``xembed.report(sites, years, "report/")`` (or ``xembed report SITES --years
2017-2024 --out report/``) writes a folder that opens from disk in any
browser, offline: no server, no CDN, every script and picture beside the
pages::

    report/index.html             all sites: a table sortable by any column
                                  (a small inline script), failures with their
                                  error, and the overview map (iframe)
    report/overview.html          outlines of all sites (xembed.explore_sites)
    report/means.csv              the batch table of all sites (xembed.extract)
    report/sites/<id>.html        one page per site
    report/sites/<id>/            its strip.png, years.gif, similarity.png,
                                  change.png, map.html (xembed.explore),
                                  means.csv, cube.zarr (int8 codes), geotiff/

How reads are shared
--------------------
The numbers come from one batch pass: :func:`xembed.extract` reads every
file window once for all the sites under it and gives the yearly means and
valid fractions of all sites (the index table, each site's means CSV and its
similarity heat-map). Each site's pictures, change table, map and exports
then come from one read of that site with :data:`~xembed.report.site.CONTEXT_M`
metres of context around it, held in memory while its page is written;
neighbouring sites whose context overlaps read those windows again
(from the local mirror, or from the range cache for remote mirrors).

A site that fails (in the batch pass or while its page is written) is listed
on the index page with its error; the other sites complete. Every file is
written atomically (a temporary renamed into place), and every id and error
is HTML-escaped.
"""

from xembed.report.build import report

__all__ = ["report"]
