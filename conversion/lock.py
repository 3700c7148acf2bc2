"""Compare-and-swap writes of a cube's small objects, and the lock of a conversion.

Two ``s2cube convert`` runs into one cube at once must not interleave their writes: the
one that comes second refuses, saying who holds the cube and how to recover, and
writes nothing. Two mechanisms make that safe:

**Compare-and-swap** (:func:`cas_store`) for the small objects that coordinate a
conversion (the cube's root ``zarr.json`` and the lock): an object is *created* only if
it does not exist, and *replaced* or *deleted* only if it is still the version that was
read; a write that lost a race raises :class:`Conflict` and the caller reads again.

- On S3, conditional requests: ``PUT`` with ``If-None-Match: *`` to create, with
  ``If-Match: <ETag>`` to replace (obstore ``put(mode="create")`` /
  ``put(mode={"e_tag": ...})``; HTTP 412 is the lost race). AWS S3 and SeaweedFS (4.x)
  honour both, atomically.
- On local disk, an exclusive create: the bytes go to a temporary file that is then
  hard-linked to the name (``link`` fails when the name exists: the object is whole or
  absent); a replace or delete holds a mutex file ``<name>.cas`` created with
  ``O_CREAT | O_EXCL`` while it compares the current bytes and renames a temporary file
  over them. The mutex is held for milliseconds; one left by a crash (its process gone,
  or older than :data:`MUTEX_STALE_S`) is broken.
- Other fsspec stores have no conditional writes: the same calls check, then write
  (a race is not detected there; a notice is logged).

**The conversion lock** (:class:`CubeLock`), ``_s2cube_journal/lock.json`` in the cube:
created when a conversion starts, refreshed (compare-and-swap) every
:data:`HEARTBEAT_S` by a thread of the converting process, removed when it ends, even
by an error. It names its holder (run id, host, pid, start, last heartbeat). A lock
whose holder is gone can never block for ever: it is taken over at once when its
process is known to have ended (same machine, pid no longer running), else when it
has not been refreshed for :data:`LOCK_TTL_S`; ``s2cube convert --break-lock`` takes
it over at once. A conversion that finds its lock taken over stops before it
finalises the cube.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from s2cube import schema
from s2cube.errors import ConversionError
from s2cube.io.storage import Location, filesystem, obstore_s3, storage_error

logger = logging.getLogger(__name__)

#: the lock of a running conversion, inside the cube (next to the journal's records)
LOCK_KEY = f"{schema.JOURNAL_PREFIX}/lock.json"
#: how often the converting process refreshes its lock
HEARTBEAT_S = 10.0
#: a lock not refreshed for this long belongs to a conversion that is gone
LOCK_TTL_S = 120.0
#: a local ``.cas`` mutex older than this was left by a crash (it is held for milliseconds)
MUTEX_STALE_S = 30.0
#: how long a local replace waits for the ``.cas`` mutex before it gives up
MUTEX_WAIT_S = 60.0


class Conflict(Exception):
    """The object changed, appeared or went away since it was read (a lost race)."""


class CubeLockedError(ConversionError):
    """Another conversion holds the cube's lock; this one wrote nothing (CLI exit code 3)."""


@dataclass(frozen=True)
class Versioned:
    """An object's bytes (None: there is none) and the version a conditional write names."""

    data: bytes | None
    version: str | None


# --- compare-and-swap stores ----------------------------------------------------------------------

class CasStore:
    """Conditional writes of small objects below one cube (keys relative to it)."""

    def __init__(self, loc: Location) -> None:
        self.loc = loc

    def read(self, key: str) -> Versioned:
        """The object at ``key`` and its version (``Versioned(None, None)`` when absent)."""
        raise NotImplementedError

    def create(self, key: str, data: bytes) -> str:
        """Write ``data`` at ``key`` if nothing is there; :class:`Conflict` otherwise."""
        raise NotImplementedError

    def replace(self, key: str, data: bytes, version: str) -> str:
        """Replace the object at ``key`` if it is still ``version``; :class:`Conflict` otherwise."""
        raise NotImplementedError

    def delete(self, key: str, version: str) -> None:
        """Delete the object at ``key`` if it is still ``version`` (gone already: nothing to do)."""
        raise NotImplementedError


def cas_store(loc: Location) -> CasStore:
    """The compare-and-swap store of ``loc``: local disk, S3, or another fsspec store."""
    if loc.is_local:
        return LocalCas(loc)
    if loc.is_s3:
        return S3Cas(loc)
    return FsspecCas(loc)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalCas(CasStore):
    """Local disk: create by write-temp + ``link``, replace under an ``O_EXCL`` mutex file."""

    def _path(self, key: str) -> str:
        return os.path.join(self.loc.path, *key.split("/"))

    def read(self, key: str) -> Versioned:
        try:
            with open(self._path(key), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return Versioned(None, None)
        return Versioned(data, _digest(data))

    def create(self, key: str, data: bytes) -> str:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = self._temp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise Conflict(f"{path} exists") from None
        except OSError:  # a file system without hard links: an exclusive open instead
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                raise Conflict(f"{path} exists") from None
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        finally:
            _unlink(tmp)
        return _digest(data)

    def replace(self, key: str, data: bytes, version: str) -> str:
        path = self._path(key)
        with self._mutex(path):
            if self.read(key).version != version:
                raise Conflict(f"{path} changed since it was read")
            os.replace(self._temp(path, data), path)
        return _digest(data)

    def delete(self, key: str, version: str) -> None:
        path = self._path(key)
        with self._mutex(path):
            current = self.read(key).version
            if current is None:
                return
            if current != version:
                raise Conflict(f"{path} changed since it was read")
            os.unlink(path)

    @staticmethod
    def _temp(path: str, data: bytes) -> str:
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        return tmp

    @contextlib.contextmanager
    def _mutex(self, path: str):
        """Hold ``<path>.cas``, created with O_EXCL; break one left by a crash."""
        mutex = f"{path}.cas"
        me = json.dumps({**_process_identity(), "time": time.time()}).encode()
        deadline = time.monotonic() + MUTEX_WAIT_S
        while True:
            try:
                fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if _break_stale_mutex(mutex):
                    continue
                if time.monotonic() > deadline:
                    raise ConversionError(
                        f"{mutex} has been held for more than {MUTEX_WAIT_S:.0f} s; if no "
                        "s2cube conversion into this cube is running, delete that file and run "
                        "again") from None
                time.sleep(random.uniform(0.002, 0.02))
                continue
            with os.fdopen(fd, "wb") as fh:
                fh.write(me)
            break
        try:
            yield
        finally:
            _unlink(mutex)


def _remove_empty(root: str, sub: str) -> None:
    """Remove ``root/sub`` and then ``root`` where they are empty folders."""
    for path in (os.path.join(root, *sub.split("/")), root):
        with contextlib.suppress(OSError):  # not empty (the conversion wrote something): kept
            os.rmdir(path)


def _break_stale_mutex(mutex: str) -> bool:
    """Remove ``mutex`` if a crash left it (its process gone, or too old); True if it did."""
    try:
        age = time.time() - os.stat(mutex).st_mtime
        with open(mutex, "rb") as fh:
            seen = fh.read()
    except FileNotFoundError:
        return True  # released meanwhile: try again
    try:
        holder = json.loads(seen)
        gone = _same_machine(holder) and not _process_running(holder["pid"], holder.get("pid_start"))
    except (ValueError, KeyError, TypeError):
        gone = False  # being written: judge it by its age
    if not gone and age < MUTEX_STALE_S:
        return False
    # rename it away (atomic: one breaker wins), then make sure it was the stale one
    aside = f"{mutex}.broken-{uuid.uuid4().hex}"
    try:
        os.rename(mutex, aside)
    except FileNotFoundError:
        return True
    try:
        with open(aside, "rb") as fh:
            if fh.read() != seen:  # a live holder's mutex, made after the stale one went
                with contextlib.suppress(FileExistsError):
                    os.link(aside, mutex)
                return False
    finally:
        _unlink(aside)
    logger.warning("removed %s, left by a process that is gone", mutex)
    return True


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _kind(exc: BaseException) -> str:
    """obstore's error kind (it raises its not-found as the builtin FileNotFoundError)."""
    return "NotFoundError" if isinstance(exc, FileNotFoundError) else type(exc).__name__


class S3Cas(CasStore):
    """S3 conditional requests through obstore (``If-None-Match: *``, ``If-Match: <ETag>``)."""

    def __init__(self, loc: Location) -> None:
        super().__init__(loc)
        self._store = None

    @property
    def store(self):
        if self._store is None:
            self._store = obstore_s3(self.loc)
        return self._store

    def read(self, key: str) -> Versioned:
        import obstore

        try:
            got = obstore.get(self.store, key)
            return Versioned(got.bytes().to_bytes(), got.meta["e_tag"])
        except Exception as exc:
            if _kind(exc) == "NotFoundError":
                return Versioned(None, None)
            raise self._error(exc, "read") from exc

    def create(self, key: str, data: bytes) -> str:
        return self._put(key, data, "create")

    def replace(self, key: str, data: bytes, version: str) -> str:
        return self._put(key, data, {"e_tag": version})

    def _put(self, key: str, data: bytes, mode: Any) -> str:
        import obstore

        lost = ("AlreadyExistsError", "PreconditionError") + (() if mode == "create" else
                                                              ("NotFoundError",))
        try:
            return obstore.put(self.store, key, data, mode=mode)["e_tag"]
        except Exception as exc:
            if _kind(exc) in lost:  # 412 (or 404 for If-Match on a deleted object)
                raise Conflict(f"{self.loc.url}/{key}: {_kind(exc)}") from None
            if _kind(exc) == "NotSupportedError":
                raise ConversionError(
                    f"the object store of {self.loc.url} does not support conditional writes "
                    "(If-None-Match / If-Match), which s2cube needs to keep two conversions "
                    "apart; use a server that does (AWS S3, SeaweedFS 4, MinIO)") from None
            raise self._error(exc, "write") from exc

    def delete(self, key: str, version: str) -> None:
        import obstore

        current = self.read(key).version
        if current is None:
            return
        if current != version:
            raise Conflict(f"{self.loc.url}/{key} changed since it was read")
        try:  # obstore has no conditional delete: a check, then the delete
            obstore.delete(self.store, key)
        except Exception as exc:
            raise self._error(exc, "delete") from exc

    def _error(self, exc: Exception, action: str) -> Exception:
        return storage_error(exc, self.loc, action=action) or exc


class FsspecCas(CasStore):
    """Stores without conditional writes: check, then write (races go undetected)."""

    _warned: ClassVar[set[str]] = set()

    def __init__(self, loc: Location) -> None:
        super().__init__(loc)
        self.fs = filesystem(loc)
        if loc.protocol not in self._warned:
            self._warned.add(loc.protocol)
            logger.info("%s:// has no conditional writes: two conversions into one cube at the "
                        "same moment are not detected there", loc.protocol)

    def read(self, key: str) -> Versioned:
        try:
            data = self.fs.cat_file(f"{self.loc.path}/{key}")
        except FileNotFoundError:
            return Versioned(None, None)
        return Versioned(data, _digest(data))

    def create(self, key: str, data: bytes) -> str:
        if self.read(key).data is not None:
            raise Conflict(f"{self.loc.url}/{key} exists")
        self.fs.pipe_file(f"{self.loc.path}/{key}", data)
        return _digest(data)

    def replace(self, key: str, data: bytes, version: str) -> str:
        if self.read(key).version != version:
            raise Conflict(f"{self.loc.url}/{key} changed since it was read")
        self.fs.pipe_file(f"{self.loc.path}/{key}", data)
        return _digest(data)

    def delete(self, key: str, version: str) -> None:
        current = self.read(key).version
        if current is None:
            return
        if current != version:
            raise Conflict(f"{self.loc.url}/{key} changed since it was read")
        self.fs.rm_file(f"{self.loc.path}/{key}")


# --- who runs where -------------------------------------------------------------------------------

def _read_text(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _machine() -> str:
    """This machine and pid namespace: pids are comparable only between equal values."""
    boot = _read_text("/proc/sys/kernel/random/boot_id")
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return f"{socket.gethostname()}|{boot}|{pidns}"


def _pid_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux clock ticks since boot), to tell a reused pid."""
    stat = _read_text(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _process_identity() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "machine": _machine(), "pid": pid,
            "pid_start": _pid_start(pid)}


def _same_machine(holder: dict) -> bool:
    return holder.get("machine") == _machine()


def _process_running(pid: int, pid_start: str | None = None) -> bool:
    """Whether process ``pid`` of this machine runs (not a zombie, not a reused pid)."""
    stat = _read_text(f"/proc/{int(pid)}/stat")
    if stat:
        fields = stat.rsplit(")", 1)[-1].split()
        if fields and fields[0] in ("Z", "X"):
            return False
        return pid_start is None or len(fields) <= 19 or fields[19] == pid_start
    if os.path.isdir("/proc/self"):
        return False  # Linux: no /proc entry, no process
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the conversion lock ---------------------------------------------------------------------------

#: runs of this process whose lock was released (a failed release must not block a rerun)
_ENDED_RUNS: set[str] = set()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Holder:
    """What the lock says about the conversion that holds it."""

    run: str
    host: str
    machine: str
    pid: int
    pid_start: str | None
    started: float
    heartbeat: float
    ttl: float

    def describe(self, now: float | None = None) -> str:
        age = max(0.0, (now or time.time()) - self.heartbeat)
        return (f"run {self.run[:12]}, pid {self.pid} on host {self.host}, started "
                f"{_iso(self.started)}, last heard from {age:.0f} s ago")

    def stale_reason(self, now: float | None = None) -> str | None:
        """Why the holder is gone, or None when it may still be running."""
        now = now or time.time()
        if self.run in _ENDED_RUNS:
            return "it ended in this process"
        if _same_machine(asdict(self)) and not _process_running(self.pid, self.pid_start):
            return f"its process (pid {self.pid}) is no longer running"
        if now - self.heartbeat > self.ttl:
            return f"it has not been heard from for {now - self.heartbeat:.0f} s (over {self.ttl:.0f} s)"
        return None

    def encode(self) -> bytes:
        return json.dumps({**asdict(self), "started_utc": _iso(self.started),
                           "heartbeat_utc": _iso(self.heartbeat),
                           "note": "lock of a running s2cube conversion; see s2cube convert "
                                   "--break-lock"}, indent=1).encode()

    @classmethod
    def decode(cls, data: bytes) -> Holder:
        raw = json.loads(data)
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})


def describe_lock(cube: Location) -> str | None:
    """Whether a conversion is writing ``cube`` now, for messages (None: no lock there)."""
    current = cas_store(cube).read(LOCK_KEY)
    if current.data is None:
        return None
    try:
        holder = Holder.decode(current.data)
    except (ValueError, KeyError, TypeError):
        return f"{cube.url}/{LOCK_KEY} cannot be read"
    reason = holder.stale_reason()
    if reason is None:
        return f"a conversion is writing it now ({holder.describe()})"
    return f"the conversion that was writing it has stopped ({holder.describe()}; {reason})"


class CubeLock:
    """The lock of one conversion of ``cube`` (a context manager).

    Parameters
    ----------
    cube
        The cube being converted.
    run_id
        This conversion's id (named in the lock and in other runs' refusals).
    break_lock
        Take the lock over even when its holder may still be running (``--break-lock``).
    ttl, heartbeat
        A lock not refreshed for ``ttl`` seconds is taken over; the holder refreshes it
        every ``heartbeat`` seconds.

    Raises
    ------
    CubeLockedError
        On entering, when another conversion holds the cube (the message names it and
        says how to recover).
    """

    def __init__(self, cube: Location, run_id: str, *, break_lock: bool = False,
                 ttl: float = LOCK_TTL_S, heartbeat: float = HEARTBEAT_S) -> None:
        self.cube, self.run_id, self.break_lock = cube, run_id, break_lock
        self.ttl, self.interval = float(ttl), float(heartbeat)
        self.store = cas_store(cube)
        self.lost: str | None = None
        self._version: str | None = None
        self._holder: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self._fresh = False

    @property
    def url(self) -> str:
        return f"{self.cube.url}/{LOCK_KEY}"

    def __enter__(self) -> CubeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _mine(self, started: float | None = None) -> Holder:
        now = time.time()
        ident = _process_identity()
        return Holder(self.run_id, ident["host"], ident["machine"], ident["pid"],
                      ident["pid_start"], started or now, now, self.ttl)

    def acquire(self) -> None:
        """Create the lock, or take over one whose holder is gone; else refuse."""
        # a local cube that does not exist yet: the lock's folders go again with the lock when
        # the conversion stops before writing anything (bad input), leaving no empty "cube"
        self._fresh = self.cube.is_local and not os.path.exists(self.cube.path)
        for attempt in range(20):
            mine = self._mine()
            try:
                self._version = self.store.create(LOCK_KEY, mine.encode())
                self._holder = mine
                break
            except Conflict:
                pass
            current = self.store.read(LOCK_KEY)
            if current.data is None:
                continue  # released meanwhile
            try:
                holder = Holder.decode(current.data)
            except (ValueError, KeyError, TypeError):
                holder = None  # being written (a store without atomic creates), or not ours
                if attempt < 3:
                    time.sleep(0.2)
                    continue
            reason = holder.stale_reason() if holder is not None else None
            if reason is None and not self.break_lock:
                raise CubeLockedError(self._refusal(holder))
            try:
                self._version = self.store.replace(LOCK_KEY, mine.encode(), current.version)
            except Conflict:
                continue  # someone else took it over or released it: look again
            self._holder = mine
            logger.warning("%s: took over the lock of %s (%s)", self.cube.url,
                           holder.describe() if holder else "an unknown conversion",
                           reason or "--break-lock")
            break
        else:
            raise CubeLockedError(f"{self.url} keeps changing hands: other conversions into "
                                  "this cube are starting; run again once they have finished")
        self._thread = threading.Thread(target=self._beat, name="s2cube-lock-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _refusal(self, holder: Holder | None) -> str:
        who = holder.describe() if holder else "a conversion whose lock cannot be read"
        recover = (f"If it is no longer running (killed, or its machine is down), the first run "
                   f"after {_iso(holder.heartbeat + holder.ttl)} takes its lock over ("
                   f"{holder.ttl:.0f} s after it was last heard from); to take it over now, "
                   if holder else "If no conversion is running, ")
        return (f"{self.cube.url} is being written by another conversion ({who}); this one "
                "stops and writes nothing. Wait for it to finish, then run the same command "
                "again: it resumes and converts only what is left. " + recover + "run the "
                f"same command with --break-lock (or delete {self.url})")

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Conflict:
                current = self.store.read(LOCK_KEY)
                try:
                    other = Holder.decode(current.data).describe() if current.data else "nobody"
                except (ValueError, KeyError, TypeError):
                    other = "an unreadable lock"
                self.lost = (f"this conversion's lock on {self.cube.url} was taken over "
                             f"(now held by {other}): it was not heard from for more than "
                             f"{self.ttl:.0f} s, or --break-lock was used")
                logger.error("%s", self.lost)
                return
            except Exception as exc:  # the store is unreachable for now: try again later
                logger.warning("could not refresh the lock %s: %s", self.url, exc)

    def refresh(self) -> None:
        """Write a new heartbeat into the lock (compare-and-swap on our own version)."""
        with self._mutex:
            if self._holder is None or self._version is None:
                return
            beat = Holder(**{**asdict(self._holder), "heartbeat": time.time()})
            self._version = self.store.replace(LOCK_KEY, beat.encode(), self._version)
            self._holder = beat

    def check(self) -> None:
        """Raise :class:`ConversionError` if the lock was taken over by another conversion."""
        if self.lost:
            raise ConversionError(f"{self.lost}; this conversion stops before finalising the "
                                  "cube. Run the same command again once the other has "
                                  "finished: it resumes")

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours (never raises)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 + self.interval)
        _ENDED_RUNS.add(self.run_id)
        with self._mutex:
            version, self._version, self._holder = self._version, None, None
        if version is None or self.lost:
            return
        try:
            self.store.delete(LOCK_KEY, version)
            if self._fresh:
                _remove_empty(self.cube.path, os.path.dirname(LOCK_KEY))
        except Conflict:
            logger.warning("the lock %s was taken over by another conversion before this one "
                           "ended", self.url)
        except Exception as exc:  # the next conversion takes it over: this process ended
            logger.warning("could not remove the lock %s (%s); the next conversion takes it "
                           "over", self.url, exc)
