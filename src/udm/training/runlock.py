"""One trainer per run folder: ``RUN/.lock`` names the process that trains it.

Two processes writing checkpoints and logs into one run folder would corrupt
each other's work, so the trainer holds a lock file while it writes there. The
file holds JSON (pid, host, the process's start time in clock ticks where the
system reports it, and when the lock was taken); it is written completely
under a temporary name and then hard-linked into place, which fails if a lock
already exists (the same guarantee as ``O_CREAT | O_EXCL``, without a window in
which another process could read a half-written lock). Where hard links are not
supported it is created with ``O_CREAT | O_EXCL`` directly.

A lock whose process is gone is *stale*: a process killed with SIGKILL (or a
machine that lost power) cannot remove its lock. On the same host the owner is
checked with ``kill(pid, 0)`` and, on Linux, its start time (so a recycled pid
does not look alive); a stale lock is taken over with a note on stderr. A lock
held on another host cannot be checked from here and is always respected; its
message says which file to delete if that process is known to be gone.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
import weakref
from pathlib import Path
from typing import Any

from ..errors import RunLockedError

#: the lock file's name inside the run folder
LOCK_NAME = ".lock"
#: an unreadable lock (a creator that died between O_EXCL and its write) younger than this is still being written
_UNREADABLE_GRACE_S = 30.0

#: the locks this process holds, by resolved run folder (a lock naming our own pid is live only if it is here)
_HELD: weakref.WeakValueDictionary[str, RunLock] = weakref.WeakValueDictionary()


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one we may not signal still exists)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def _describe(info: dict[str, Any]) -> str:
    since = f" since {info['started']}" if info.get("started") else ""
    return f"process {info.get('pid')} on {info.get('host')}{since}"


def _read(path: Path) -> tuple[bytes, dict[str, Any] | None] | None:
    """(raw bytes, parsed lock or None if unreadable) of the lock at ``path``; None when there is no lock."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return raw, None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or not isinstance(info.get("host"), str):
        return raw, None
    return raw, info


def _is_stale(path: Path, info: dict[str, Any] | None) -> bool:
    """Whether the lock at ``path`` (parsed as ``info``) belongs to no live process."""
    if info is None:
        try:
            return time.time() - path.stat().st_mtime > _UNREADABLE_GRACE_S
        except FileNotFoundError:
            return True
    if info["host"] != socket.gethostname():
        return False
    pid = info["pid"]
    if pid == os.getpid():
        return str(path.parent.resolve()) not in _HELD
    if not _pid_alive(pid):
        return True
    recorded, current = info.get("process_start"), _process_start(pid)
    return recorded is not None and current is not None and recorded != current


def holder(run_dir: str | Path) -> dict[str, Any] | None:
    """The live process that holds ``run_dir``'s lock (its lock's JSON), or None if the folder is free or the lock stale."""
    path = Path(run_dir) / LOCK_NAME
    read = _read(path)
    if read is None:
        return None
    _, info = read
    if _is_stale(path, info):
        return None
    return info if info is not None else {"pid": "?", "host": "?", "started": None}


def locked_message(run_dir: Path, info: dict[str, Any]) -> str:
    """The one-line refusal for a run folder that ``info``'s process holds."""
    hint = ""
    if info.get("host") != socket.gethostname():
        hint = f" (if that process is gone, delete {Path(run_dir) / LOCK_NAME})"
    return f"{run_dir} is being trained by {_describe(info)}; wait for it or choose another --out{hint}"


class RunLock:
    """The lock of one run folder, held by this process from :meth:`acquire` until :meth:`release`.

    Release is idempotent and also runs when the object is garbage-collected
    or the interpreter exits, so only a hard kill leaves a (stale) lock behind.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.info: dict[str, Any] = {}
        self._payload: bytes | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def held(self) -> bool:
        return self._payload is not None

    def acquire(self) -> RunLock:
        """Create the run folder if needed and take its lock; RunLockedError names the live holder.

        A stale lock is taken over with a note on stderr. Returns ``self``.
        """
        if self.held:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "process_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        payload = (json.dumps(self.info) + "\n").encode()
        for _ in range(5):
            if self._create(payload):
                self._payload = payload
                _HELD[str(self.run_dir.resolve())] = self
                self._finalizer = weakref.finalize(self, _release_file, self.path, payload)
                return self
            read = _read(self.path)
            if read is None:
                continue  # released between our attempt and the read: try again
            raw, info = read
            if not _is_stale(self.path, info):
                raise RunLockedError(locked_message(self.run_dir, info or {"pid": "?", "host": "?", "started": None}))
            if self._take_over(raw):
                who = _describe(info) if info is not None else "an unreadable lock"
                print(f"udm: {self.run_dir}: taking over the stale lock of {who}, which is gone", file=sys.stderr)
        raise RunLockedError(f"{self.run_dir}: could not take its lock {self.path}, other processes keep taking it; try again")

    def _create(self, payload: bytes) -> bool:
        """Create the lock file holding ``payload`` if none exists; False if one does."""
        tmp = self.run_dir / f"{LOCK_NAME}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except OSError:
                pass  # no hard links on this file system: fall back to O_EXCL
        finally:
            tmp.unlink(missing_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _take_over(self, raw: bytes) -> bool:
        """Remove the stale lock whose content is ``raw``; False if another process replaced it meanwhile."""
        aside = self.run_dir / f"{LOCK_NAME}.stale-{os.getpid()}"
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            if aside.read_bytes() == raw:
                return True
            try:  # a live lock that replaced the stale one after we read it: put it back
                os.link(aside, self.path)
            except OSError:
                pass
            return False
        finally:
            aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this process still holds it (idempotent)."""
        if self._payload is None:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
        _release_file(self.path, self._payload)
        _HELD.pop(str(self.run_dir.resolve()), None)
        self._payload = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _release_file(path: Path, payload: bytes) -> None:
    """Delete the lock at ``path`` if it still holds ``payload`` (never another process's lock)."""
    try:
        if path.read_bytes() == payload:
            path.unlink()
    except FileNotFoundError:
        pass
