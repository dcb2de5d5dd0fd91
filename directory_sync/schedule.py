"""Running syncs on a schedule (`ght sync run --every 10m`).

One process runs the selected sites, waits until the next tick, and again, until it is asked to stop
(SIGTERM from systemd or Kubernetes, Ctrl-C). Ticks are counted from the start of each run, so a run
that takes longer than the interval is followed by the next at once, never by two at a time. Several
schedulers may run against the same database (two hosts, for availability): the run lock of each site
(`directory_sync.locking`) makes the second one skip a site the first is synchronising.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

from .errors import ConfigError

_INTERVAL = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
#: Shortest interval accepted: a delta of a quiet site takes about a second.
MIN_INTERVAL = 1.0


def parse_interval(text: str) -> float:
    """Seconds in `10m`, `90s`, `1h`, `1h30m`. Raises ConfigError (exit code 2) for anything else."""
    match = _INTERVAL.fullmatch(text.strip().lower())
    if not text.strip() or match is None:
        raise ConfigError(
            None, "--every", f"expected an interval such as 30s, 10m, 1h or 1h30m, got {text!r}"
        )
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = float(hours * 3600 + minutes * 60 + seconds)
    if total < MIN_INTERVAL:
        raise ConfigError(None, "--every", f"the interval must be at least {MIN_INTERVAL:g} s")
    return total


def run_every(
    interval: float,
    job: Callable[[], None],
    stop: threading.Event,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Call `job` now and then every `interval` seconds until `stop` is set; return how many runs ran.

    A run is never interrupted by `stop`: it finishes (a sync commits per site), then the loop ends.
    """
    runs = 0
    while not stop.is_set():
        started = clock()
        job()
        runs += 1
        stop.wait(max(0.0, started + interval - clock()))
    return runs
