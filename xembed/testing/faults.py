"""What the mirror server can do to a request: faults, the rules that choose them, the log.

A rule is a mapping of filters (``path_glob``, ``method``, ``ranged``,
``nth``) and actions (the :class:`Fault` fields), or a callable taking a
:class:`MirrorRequest`; see :func:`xembed.testing.serve_mirror`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Fault", "FaultRule", "MirrorRequest", "Rule", "as_rules"]


@dataclass(frozen=True)
class Fault:
    """What to do to one request instead of (or on top of) answering it.

    Attributes
    ----------
    status : int or None
        Answer with this HTTP status (e.g. 500, 503, 429, 404) and a short
        text body, instead of the file.
    delay : float
        Seconds to wait before answering (a slow server; combine with
        another field to be slow *and* fail).
    truncate : int or None
        Announce the full ``Content-Length`` but send only this many body
        bytes, then close the connection (a body cut short in transit).
    reset : bool
        Abort the connection with a TCP reset before sending anything.

    Examples
    --------
    >>> Fault(status=503)
    Fault(status=503, delay=0.0, truncate=None, reset=False)
    >>> Fault(truncate=-1)
    Traceback (most recent call last):
    ...
    ValueError: Fault.truncate must be a byte count >= 0 or None, not -1
    """

    status: int | None = None
    delay: float = 0.0
    truncate: int | None = None
    reset: bool = False

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= int(self.status) <= 599:
            raise ValueError(f"Fault.status must be an HTTP status 100..599, not {self.status!r}")
        if not float(self.delay) >= 0:
            raise ValueError(f"Fault.delay must be seconds >= 0, not {self.delay!r}")
        if self.truncate is not None and int(self.truncate) < 0:
            raise ValueError(
                f"Fault.truncate must be a byte count >= 0 or None, not {self.truncate!r}"
            )


@dataclass(frozen=True)
class MirrorRequest:
    """One request the server received (retries are separate requests).

    Attributes
    ----------
    number : int
        1-based serial number among all requests since the last reset.
    method : str
        ``"GET"`` or ``"HEAD"``.
    path : str
        The requested file relative to the mirror folder, e.g.
        ``"2019/22S/x-0000000000-0000000000.tiff"`` (no URL prefix).
    range : str or None
        The ``Range`` header as sent, e.g. ``"bytes=0-16383"``.
    status : int
        The HTTP status answered (0 for a reset, or while being answered).
    fault : Fault or None
        The fault injected into this request, if any.
    sent : int
        Body bytes sent.
    started, ended : float
        ``time.monotonic()`` when the request arrived and when its answer was
        complete (``nan`` while in flight). On Linux the clock is shared by
        all processes, so a reader in a subprocess can compare its own times.
    """

    number: int
    method: str
    path: str
    range: str | None = None
    status: int = 0
    fault: Fault | None = None
    sent: int = 0
    started: float = 0.0
    ended: float = float("nan")


#: A fault rule: a mapping (see :func:`serve_mirror`) or a callable.
FaultRule = Mapping[str, Any] | Callable[[MirrorRequest], "Fault | Mapping[str, Any] | None"]

_FAULT_KEYS = frozenset(f.name for f in fields(Fault))
_FILTER_KEYS = frozenset({"path_glob", "method", "ranged", "nth"})


def _as_fault(value: Fault | Mapping[str, Any] | None) -> Fault | None:
    if value is None or isinstance(value, Fault):
        return value
    if isinstance(value, Mapping):
        return Fault(**{k: v for k, v in value.items() if k in _FAULT_KEYS})
    raise TypeError(
        f"a fault rule returned {type(value).__name__}; expected a Fault, a mapping of "
        f"{sorted(_FAULT_KEYS)} or None"
    )


class Rule:
    """One fault rule with its own count of the requests it matched.

    Calling it with a :class:`MirrorRequest` gives the :class:`Fault` to
    inject, or ``None``.

    Examples
    --------
    >>> rule = Rule({"path_glob": "*.tiff", "nth": 2, "status": 503})
    >>> [rule(MirrorRequest(n, "GET", "a.tiff")) for n in (1, 2)]
    [None, Fault(status=503, delay=0.0, truncate=None, reset=False)]
    """

    def __init__(self, rule: FaultRule) -> None:
        self.spec = rule
        self.count = 0
        self.callable: Callable[[MirrorRequest], Any] | None = None
        if callable(rule):
            self.callable = rule
            return
        if not isinstance(rule, Mapping):
            raise TypeError(
                f"a fault rule must be a mapping or a callable, not {type(rule).__name__}"
            )
        unknown = sorted(set(rule) - _FAULT_KEYS - _FILTER_KEYS)
        if unknown:
            raise ValueError(
                f"unknown fault rule keys {unknown}; filters are {sorted(_FILTER_KEYS)} and "
                f"actions are {sorted(_FAULT_KEYS)}"
            )
        self.fault = _as_fault(rule)
        if self.fault == Fault():
            raise ValueError(
                f"fault rule {dict(rule)!r} does nothing; give one of {sorted(_FAULT_KEYS)}"
            )
        self.glob = str(rule.get("path_glob", "*"))
        method = rule.get("method")
        self.method = None if method is None else str(method).upper()
        self.ranged = rule.get("ranged")
        nth = rule.get("nth")
        self.nth = None if nth is None else frozenset([nth] if isinstance(nth, int) else nth)
        if self.nth is not None and not all(isinstance(n, int) and n >= 1 for n in self.nth):
            raise ValueError(
                f"fault rule 'nth' must be an int >= 1 or a list of them (1 = the first "
                f"request the rule matches), not {nth!r}"
            )

    def __call__(self, request: MirrorRequest) -> Fault | None:
        if self.callable is not None:
            return _as_fault(self.callable(request))
        if not fnmatch.fnmatchcase(request.path, self.glob):
            return None
        if self.method is not None and request.method != self.method:
            return None
        if self.ranged is not None and bool(self.ranged) != (request.range is not None):
            return None
        self.count += 1
        if self.nth is not None and self.count not in self.nth:
            return None
        return self.fault


def as_rules(faults: FaultRule | Sequence[FaultRule] | None) -> list[Rule]:
    """One :class:`Rule` per fault rule given (a rule, a list of rules, or None)."""
    if faults is None:
        return []
    if isinstance(faults, Mapping) or callable(faults):
        return [Rule(faults)]
    return [Rule(rule) for rule in faults]
