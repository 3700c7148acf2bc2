"""One task per item on dask.distributed, a bounded number in flight.

Submitting every task at once makes a graph that grows with the archive (16,009 patch
locations at 53 ROIs: tens of MB of pickled tasks before the first one runs) and holds every
result on the workers until it is gathered. :func:`map_bounded` keeps ``2 × threads`` tasks in
flight, sends the shared argument once per worker, releases each result as it arrives, runs a
task again when it was cancelled with a lost worker, and reports every failure at the end.
Conversion, validation and verification all run through it.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from s2cube.errors import S2CubeError

logger = logging.getLogger(__name__)

#: times a task cancelled with a lost worker is submitted again before it counts as failed
RESUBMITS = 2


class TasksFailed(S2CubeError):
    """Some tasks of :func:`map_bounded` failed; ``failures`` has one line for each."""

    def __init__(self, what: str, failures: list[str]) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  - {f}" for f in self.failures[:50])
        more = f"\n  … and {len(self.failures) - 50} more" if len(self.failures) > 50 else ""
        super().__init__(f"{len(self.failures)} {what}(s) failed:\n{lines}{more}")

    def __reduce__(self):
        return (type(self), ("task", self.failures))


def in_flight(client) -> int:
    """Tasks kept in flight: two per worker thread (at least 4)."""
    return max(4, 2 * sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()))


def map_bounded(
    client,
    fn: Callable,
    shared: Any,
    items: Sequence,
    *,
    what: str = "task",
    key: Callable[[int, Any], str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    describe_error: Callable[[str], str] = str,
    stop_on_error: bool = False,
) -> list:
    """``[fn(shared, item) for item in items]``, computed on ``client``.

    Parameters
    ----------
    client
        A ``dask.distributed.Client``.
    fn
        A picklable function of ``(shared, item)``.
    shared
        Scattered once to every worker (it may be large: every ROI's grid, a storage source).
    items
        One task each; results come back in this order.
    what
        Names a task in errors ("patch location", "block").
    key
        ``key(index, item)`` names a task's future (unique per call); a fresh name otherwise.
    progress
        ``progress(done, total)`` as tasks finish.
    describe_error
        Applied to each failure's line (to redact credentials from messages).
    stop_on_error
        Raise the first task's own exception at once (the tasks still queued are not
        submitted), instead of running every task and raising :class:`TasksFailed`.

    Raises
    ------
    TasksFailed
        After every task has ended, listing each one that raised or was lost twice.
    """
    from dask.distributed import as_completed

    run = uuid.uuid4().hex[:12]
    name = key or (lambda i, _item: f"{what.split()[0]}-{run}-{i}")
    ref = [_scatter(client, shared)]
    results: list = [None] * len(items)
    failures: list[str] = []
    attempts: dict[str, tuple[int, int]] = {}

    def submit(i: int, attempt: int = 0):
        k = name(i, items[i]) + (f"-again-{attempt}" if attempt else "")
        attempts[k] = (i, attempt)
        return client.submit(fn, ref[0], items[i], key=k, retries=2, pure=False)

    pending = iter(range(len(items)))
    futures = as_completed([submit(i) for i in itertools.islice(pending, in_flight(client))],
                           with_results=False)
    done = 0
    for fut in futures:
        i, attempt = attempts.pop(fut.key)
        if fut.status not in ("finished", "error") and attempt < RESUBMITS:
            # cancelled with a worker that died (and the shared copy with it): scatter it
            # again and run the task anew
            logger.warning("task %s was %s; running it again", fut.key, fut.status)
            fut.release()
            ref[0] = _scatter(client, shared)
            futures.add(submit(i, attempt + 1))
            continue
        done += 1
        if fut.status == "finished":
            results[i] = fut.result()
        elif fut.status == "error":
            exc = fut.exception()
            if stop_on_error:
                futures.clear()
                raise exc
            failures.append(describe_error(f"{fut.key}: {type(exc).__name__}: {exc}"))
        else:  # lost again: say so, never skip
            failures.append(f"{fut.key}: task {fut.status} (a worker was lost?)")
        fut.release()
        nxt = next(pending, None)
        if nxt is not None:
            futures.add(submit(nxt))
        if progress is not None:
            progress(done, len(items))
    if failures:
        raise TasksFailed(what, failures)
    return results


def _scatter(client, shared: Any):
    """One future for ``shared``, on every worker (scattered bare, a dict or a list would be
    scattered item by item, a dict's items under its own keys)."""
    return client.scatter([shared], broadcast=True, hash=False)[0]
