"""Cluster-wide control of fetching, for the pipeline's wiring: per-host limits, the global stop, retry-failed.

Fetch code sees only a `FetchGate` (admit me to this host? is the run stopping?); this module answers with
cluster-wide coordination primitives that the pipeline hands in (Dask's, which live on the scheduler and so span
every worker; this module never imports Dask):
- a semaphore per host caps concurrent fetches at `fetch.per_host`, and a lease is held at
  least `per_host / rate_limit` s, which bounds the start rate at `rate_limit` per second. It is named by
  host and cap, not by run, so runs sharing a cluster also share each host's cap;
- an event is the global stop, set by the client when `fetch.stop_after` clips in a row came
  back `rate_limited` or `bot_check` (a banned IP must not burn the rest of the list).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from curation import storage
from curation.clip_cache import ClipSummary, cache_path, read_summary
from curation.config import FetchConfig
from curation.errors import TRANSIENT_KINDS, ClipError
from curation.fetch.clip import FetchGate

STOP_KINDS = frozenset({"rate_limited", "bot_check"})
_SEMAPHORES: dict[str, object] = {}  # per worker process: one Semaphore object per host and cap


class ClusterGate(FetchGate):
    """A FetchGate backed by scheduler-side primitives: `event(name)` returns the named cluster-wide event,
    `semaphore(max_leases, name)` the named semaphore. Both must be module-level functions, so the gate pickles
    as names and numbers only."""

    def __init__(self, cfg: FetchConfig, event: Callable[[str], Any], semaphore: Callable[[int, str], Any]):
        self.event, self.semaphore = event, semaphore
        self.stop_name = f"s2s-fetch-stop-{uuid.uuid4().hex[:12]}"  # one per run: a stop ends this run only
        self.per_host, self.rate_limit = cfg.per_host, cfg.rate_limit
        # A slot is free again within one fetch's time limit (or a dead worker's lease expiring).
        self.wait_s = cfg.timeout_s + 2 * cfg.socket_timeout_s + 60

    def _event(self):
        return self.event(self.stop_name)

    def stopped(self) -> bool:
        return self._event().is_set()

    def request_stop(self) -> None:
        self._event().set()

    def _semaphore(self, host: str):
        name = f"s2s-fetch-host-{host}-max{self.per_host}"
        if name not in _SEMAPHORES:
            _SEMAPHORES[name] = self.semaphore(self.per_host, name)
        return _SEMAPHORES[name]

    @contextlib.contextmanager
    def slot(self, host: str) -> Iterator[None]:
        semaphore = self._semaphore(host)
        if not semaphore.acquire(timeout=self.wait_s):
            raise ClipError("timeout", f"no free fetch slot for {host} within {self.wait_s:g} s "
                                       f"(fetch.per_host = {self.per_host})")
        started = time.monotonic()
        try:
            yield
        finally:
            if self.rate_limit:  # per_host leases, each held >= per_host / rate: <= rate starts per second
                time.sleep(max(0.0, self.per_host / self.rate_limit - (time.monotonic() - started)))
            semaphore.release()


class StopCounter:
    """Counts consecutive rate-limit / bot-check summaries as they come back; says when to stop the run."""

    def __init__(self, stop_after: int, on_stop: Callable[[], None] | None = None):
        self.stop_after, self.on_stop = stop_after, on_stop
        self.run = 0
        self.reason: str | None = None

    def record(self, summaries: Iterable[ClipSummary]) -> None:
        """Feed a task's summaries (those read back from cache do not count); sets `reason` on stopping."""
        for summary in summaries:
            if summary.from_cache:
                continue
            self.run = self.run + 1 if summary.error_kind in STOP_KINDS else 0
            if self.stop_after and self.run >= self.stop_after and self.reason is None:
                self.reason = (f"stopped after {self.run} clips in a row were refused as rate_limited/bot_check "
                               f"(last: {summary.error_kind}: {summary.error}); unprocessed clips stay pending: "
                               "rerun later, with RETRY_FAILED=1 to retry the refused ones")
                if self.on_stop is not None:
                    self.on_stop()  # tasks already running leave their remaining clips alone


def forget_transient_failures(cache_dir: str, clip_ids: Iterable[str]) -> int:
    """Delete the cache files of clips whose recorded failure is transient, so this run fetches them again.

    Clips that failed for good (404, private, ...) and clips that succeeded keep their files."""
    forgotten = 0
    for clip_id in clip_ids:
        path = cache_path(cache_dir, clip_id)
        if storage.exists(path) and read_summary(path).error_kind in TRANSIENT_KINDS:
            storage.remove(path)
            forgotten += 1
    return forgotten
