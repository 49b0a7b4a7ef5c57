"""A local fake of the Earth Engine REST API, serving a mirror-format folder.

:func:`fake_earthengine` starts a small threaded HTTP server on 127.0.0.1
that answers the four calls the ``earthengine-api`` client and Xee make to
open and read an image collection:

- ``GET /$discovery/rest``: the API description (the one ``ee`` ships in
  ``ee/tests/``, relabelled ``v1``);
- ``GET /v1/projects/{project}/algorithms``: the function list (``ee``'s
  ``ee/tests/algorithms.json``);
- ``POST /v1/projects/{project}/value:compute``: ``getInfo`` of a value;
- ``POST /v1/projects/{project}/image:computePixels``: pixels as ``.npy``.

It serves ``GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL`` from a local mirror (the
bundled sample by default), one collection image per mirror file, by
evaluating the request's expression graph itself. It knows only the handful of
functions xembed's graphs use (:data:`SUPPORTED_FUNCTIONS`) and answers any
other with HTTP 400 naming it, so an ``ee`` or Xee upgrade that changes the
graph fails loudly instead of silently computing something else.

Nothing here talks to the internet; the real client and the real Xee run end
to end against it.

The package's modules: :mod:`.model` (requests, fault rules, the values an
expression evaluates to), :mod:`.evaluator` (the expression graph),
:mod:`.pixels` (``computePixels`` from the mirror files) and :mod:`.server`
(the HTTP server and :func:`fake_earthengine`).
"""

from xembed.testing.earthengine.model import (
    SUPPORTED_FUNCTIONS,
    FakeRequest,
    all_requests_fail,
    first_requests_fail,
)
from xembed.testing.earthengine.server import FakeEarthEngine, fake_earthengine

__all__ = [
    "SUPPORTED_FUNCTIONS",
    "FakeEarthEngine",
    "FakeRequest",
    "all_requests_fail",
    "fake_earthengine",
    "first_requests_fail",
]
