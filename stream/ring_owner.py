"""Who owns a shared-memory frame ring, whether that process still lives, and the sweep that
removes the segments dead owners left behind: they hold patient images, and a SIGKILLed,
OOM-killed or crashed run cannot remove its own.

A pid alone is not an identity (pids are reused), so a ring's header also carries its
owner's start time (``/proc/<pid>/stat`` field 22, clock ticks since boot) and pid
namespace: an owner is dead when its pid is gone, is a zombie, or belongs to a process that
started at another time. Where that cannot be told (another pid namespace, a platform
without ``/proc``), the owner counts as alive: the sweep never removes a live run's ring."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

__all__ = ["owner_alive", "sweep_stale", "this_process"]

SHM_DIR = Path("/dev/shm")  # where Linux keeps POSIX shared memory (shm_open names)
PREFIX = "hepascope-"       # the pipeline's rings: hepascope-<pid>-<random>
_NAME_PID = re.compile(r"^hepascope-(\d+)-")
_PROC = Path("/proc")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of ``pid`` from /proc, or None if it has none."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ...": comm may hold spaces and parentheses, so split after the last
    # ')'; starttime is field 22 of the line, the 20th after comm.
    fields = text.rsplit(")", 1)[-1].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _pidns(pid: int | str = "self") -> int:
    try:
        return os.stat(_PROC / str(pid) / "ns" / "pid").st_ino
    except OSError:
        return 0


def this_process() -> tuple[int, int]:
    """(start time, pid namespace inode) of the calling process; 0 where unknown."""
    st = _stat(os.getpid())
    return (st[1] if st else 0), _pidns()


def owner_alive(pid: int, start: int = 0, pidns: int = 0) -> bool | None:
    """Whether the process that created a ring lives: False when it is gone (or a zombie,
    or its pid now names a process that started at another time), None when this process
    cannot tell (another pid namespace), True otherwise."""
    if pid <= 0:
        return None
    if pidns and pidns != _pidns():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    if not _PROC.is_dir():
        return True  # no /proc (macOS): the pid exists, that is all we know
    st = _stat(pid)
    if st is None:
        return False  # ended between kill() and the read
    state, started = st
    if state in ("Z", "X"):
        return False  # dead, not yet reaped by its parent
    return not (start and started != start)


def _native() -> ModuleType | None:
    try:
        from hepascope.stream import ring_native
    except ImportError:  # not built: ring.py says how to fix it when a ring is used
        return None
    return ring_native


def _stale(ring: ModuleType, name: str) -> int | None:
    """The dead owner's pid if segment ``name`` (without '/') is stale, else None."""
    try:
        info = ring.peek("/" + name)
    except RuntimeError:  # gone meanwhile (NotFoundError), or not ours to open
        return None
    if info is None:  # never initialised: its creator died sizing it, or is sizing it now
        m = _NAME_PID.match(name)
        pid = int(m.group(1)) if m else 0
        return pid if pid and owner_alive(pid) is False else None
    _version, pid, start, pidns = info
    return pid if owner_alive(pid, start, pidns) is False else None


def sweep_stale(prefix: str = PREFIX) -> list[str]:
    """Remove the rings named ``prefix``* whose owner process is dead; their names. Readers
    still attached keep their mapping (an unlink only removes the name). Linux only (other
    systems list no shm names): elsewhere nothing is swept."""
    ring = _native()
    if ring is None or not SHM_DIR.is_dir():
        return []
    removed = []
    for entry in os.scandir(SHM_DIR):
        if not entry.name.startswith(prefix):
            continue
        pid = _stale(ring, entry.name)
        if pid is None:
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue  # another start swept it first
        except PermissionError as e:  # another user's: say so, never block the live path
            log.warning("cannot remove the ring %s left by process %d, which is gone: %s",
                        entry.path, pid, e)
            continue
        log.warning("removed shared-memory ring %s left by process %d, which is gone",
                    entry.name, pid)
        removed.append(entry.name)
    return removed
