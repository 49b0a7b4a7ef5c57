"""How remote reads retry transient failures: :class:`RetryPolicy`.

The policy in force is ``xembed.sources.cog.RETRY`` (the reader of the
mirror owns it, so replacing that attribute changes every read).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["RetryPolicy", "env_number"]


def env_number(name: str, default: float, kind: Callable[[str], Any]) -> Any:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        return kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(
            f"environment variable {name}={value!r} is not {what}; unset it or set it to "
            f"{what} such as {default!r}"
        ) from None


@dataclass(frozen=True)
class RetryPolicy:
    """How remote reads retry transient failures.

    A failed read is tried again up to ``attempts`` times in all, sleeping
    ``min(max_backoff, backoff * 2 ** (n - 1))`` seconds (times a random
    factor in [0.5, 1], so that parallel readers spread out) after the n-th
    failure. With the defaults a read gives up after 5 attempts and at most
    7.5 s of sleep (:attr:`budget`), plus up to ``timeout`` for each request
    that stalls.

    Parameters
    ----------
    attempts : int, default 5
        Tries per read in all (1: no retries).
    backoff : float, default 0.5
        Seconds to wait after the first failure; doubled after each next one.
    max_backoff : float, default 8.0
        Cap on a single wait.
    timeout : float, default 30.0
        Seconds a request may make no progress (connecting, or receiving
        nothing) before it is abandoned and counts as a failure. GDAL
        applies it in whole seconds (at least 1).

    Examples
    --------
    >>> policy = RetryPolicy(attempts=4, backoff=0.5, max_backoff=1.5)
    >>> [policy.delay(n) for n in (1, 2, 3)], policy.budget
    ([0.5, 1.0, 1.5], 3.0)
    >>> RetryPolicy(attempts=0)
    Traceback (most recent call last):
    ...
    ValueError: RetryPolicy.attempts must be an integer >= 1 (1 means no retries), not 0
    """

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 8.0
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.attempts, bool)
            or not isinstance(self.attempts, int)
            or self.attempts < 1
        ):
            raise ValueError(
                "RetryPolicy.attempts must be an integer >= 1 (1 means no retries), "
                f"not {self.attempts!r}"
            )
        for name in ("backoff", "max_backoff"):
            if not getattr(self, name) >= 0:
                raise ValueError(
                    f"RetryPolicy.{name} must be seconds >= 0, not {getattr(self, name)!r}"
                )
        if not self.timeout > 0:
            raise ValueError(f"RetryPolicy.timeout must be seconds > 0, not {self.timeout!r}")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The default policy, with the fields the environment sets.

        ``XEMBED_RETRY_ATTEMPTS``, ``XEMBED_RETRY_BACKOFF``,
        ``XEMBED_RETRY_MAX_BACKOFF`` and ``XEMBED_HTTP_TIMEOUT`` override
        ``attempts``, ``backoff``, ``max_backoff`` and ``timeout``.

        Examples
        --------
        >>> RetryPolicy.from_env() == RetryPolicy()  # with none of them set
        True
        """
        default = cls()
        return cls(
            attempts=env_number("XEMBED_RETRY_ATTEMPTS", default.attempts, int),
            backoff=env_number("XEMBED_RETRY_BACKOFF", default.backoff, float),
            max_backoff=env_number("XEMBED_RETRY_MAX_BACKOFF", default.max_backoff, float),
            timeout=env_number("XEMBED_HTTP_TIMEOUT", default.timeout, float),
        )

    def delay(self, failures: int) -> float:
        """The longest wait after the ``failures``-th failed attempt, in seconds."""
        return float(min(self.max_backoff, self.backoff * 2 ** (failures - 1)))

    @property
    def budget(self) -> float:
        """The most a read can sleep between attempts before giving up, in seconds."""
        return float(sum(self.delay(n) for n in range(1, self.attempts)))

    def gdal_options(self) -> dict[str, str]:
        """GDAL's HTTP timeouts for this policy: a stall of ``timeout`` seconds fails."""
        stall = str(max(1, math.ceil(self.timeout)))
        return {
            "GDAL_HTTP_CONNECTTIMEOUT": f"{self.timeout:g}",
            "GDAL_HTTP_LOW_SPEED_TIME": stall,
            "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
        }
