"""The report's HTML: pages, tables and the sorting script, all escaped and offline.

Pages are plain HTML5 with an inline style sheet and, on the index, one
small inline script that sorts the table when a header is clicked: it reads
each cell's ``data-sort`` value (numbers compare as numbers, empty cells go
last) and needs no server, no library and no network. Every text that comes
from the user (site ids, error messages, column values) goes through
:func:`html.escape`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Column",
    "page",
    "sortable_table",
    "table",
]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 70em;
       padding: 0 1em; color: #222; }
h1, h2 { font-weight: 600; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td.text, th.text { text-align: left; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; }
img { max-width: 100%; border: 1px solid #ddd; }
iframe { width: 100%; height: 32em; border: 1px solid #ccc; }
.error { color: #a00; }
.note { color: #555; font-size: 0.9em; }
"""

# Sort the table by the clicked column; a second click reverses. Values are
# the cells' data-sort attributes: numbers compare numerically, empty last.
_SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var headers = table.querySelectorAll("thead th");
  headers.forEach(function (th, column) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var text = row.cells[column].getAttribute("data-sort");
        var number = parseFloat(text);
        return text === "" ? null : (isNaN(number) ? text : number);
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return (x === null) - (y === null); }
        var order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0)
                                          : (typeof x === "number" ? -1 : 1);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


_TEXT = ' class="text"'  # left-aligned text cells


@dataclass(frozen=True)
class Column:
    """One table column: header, key in the row mapping, number format, alignment."""

    title: str
    key: str
    fmt: str = ""
    text: bool = False


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(math.isnan(value))
    except TypeError:
        return False


def _cell(column: Column, row: dict[str, Any]) -> str:
    value: Any = row.get(column.key)
    link = row.get(f"{column.key}_href")
    if isinstance(value, float) and value.is_integer() and not column.fmt:
        value = int(value)  # years in a column with gaps (NaN) come as floats
    if _missing(value):
        shown, sort = "", ""
    elif column.fmt:
        shown, sort = format(value, column.fmt), repr(float(value))
    else:
        shown = sort = str(value)
    content = html.escape(shown)
    if isinstance(link, str) and link:  # a missing link is None or NaN (pandas)
        content = f'<a href="{html.escape(str(link))}">{content}</a>'
    cls = _TEXT if column.text else ""
    return f'<td{cls} data-sort="{html.escape(sort)}">{content}</td>'


def table(
    columns: Sequence[Column], rows: Iterable[dict[str, Any]], *, sortable: bool = False
) -> str:
    """An HTML table; cells carry ``data-sort`` values, ``{key}_href`` makes a link.

    Examples
    --------
    >>> print(table([Column("id", "id", text=True)], [{"id": "<a>", "id_href": "a.html"}]))
    <table>
    <thead><tr><th class="text">id</th></tr></thead>
    <tbody>
    <tr><td class="text" data-sort="&lt;a&gt;"><a href="a.html">&lt;a&gt;</a></td></tr>
    </tbody>
    </table>
    """
    heads = "".join(f"<th{_TEXT if c.text else ''}>{html.escape(c.title)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(_cell(c, row) for c in columns) + "</tr>" for row in rows)
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}>\n<thead><tr>{heads}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def sortable_table(columns: Sequence[Column], rows: Iterable[dict[str, Any]]) -> str:
    """:func:`table` whose headers sort it (the page needs ``script=True``)."""
    return table(columns, rows, sortable=True)


def page(title: str, body: str, *, script: bool = False) -> str:
    """A whole HTML page: ``title`` is escaped, ``body`` is HTML already.

    Examples
    --------
    >>> text = page("site <1>", "<p>hi</p>")
    >>> "<title>site &lt;1&gt;</title>" in text, "<script>" in text
    (True, False)
    """
    tail = f"<script>{_SORT_SCRIPT}</script>\n" if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n{tail}</body>\n</html>\n"
    )
