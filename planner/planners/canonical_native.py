"""canonical_search.c, compiled at first use and loaded with ctypes.

The shared library goes to a cache directory keyed by the source's hash, so an
edited source is rebuilt and concurrent first uses do not clash (each builds to a
private name, then renames). No C compiler, or a failing build, leaves `load()`
returning None with a one-line reason in `UNAVAILABLE`: callers fall back to the
Python reference, so installing the package never depends on a compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

SOURCE = Path(__file__).with_name("canonical_search.c")
UNAVAILABLE: str | None = None
_lib: ctypes.CDLL | None = None
_tried = False


def cache_dir() -> Path:
    root = os.environ.get("TINYPLAN_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(root) / "tinyplan" if root else Path.home() / ".cache" / "tinyplan"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(target: Path) -> str | None:
    """Compile to `target`; the reason on failure."""
    cc = _compiler()
    if cc is None:
        return "no C compiler (cc, gcc, clang or $CC) found"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [cc, "-O2", "-std=c99", "-shared", "-fPIC", str(SOURCE), "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        os.unlink(tmp)
        return f"{cc} failed: {exc}"
    if done.returncode != 0:
        os.unlink(tmp)
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        return f"{cc} failed: {first}"
    os.replace(tmp, target)
    return None


def load() -> ctypes.CDLL | None:
    global _lib, _tried, UNAVAILABLE
    if _tried:
        return _lib
    _tried = True
    try:
        digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
        target = cache_dir() / f"canonical_search-{digest}{_suffix()}"
        if not target.exists():
            UNAVAILABLE = _build(target)
        if UNAVAILABLE is None:
            lib = ctypes.CDLL(str(target))
            fn = lib.canonical_search
            i32p, i64p = ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int64)
            fn.argtypes = [ctypes.c_int, ctypes.c_int, i64p, i32p, i32p, i32p, i32p,
                           ctypes.c_int, ctypes.c_int, i64p, i64p, i32p,
                           ctypes.c_int64, ctypes.c_int64, ctypes.c_double, i64p, i64p]
            fn.restype = ctypes.c_int
            _lib = lib
    except OSError as exc:
        UNAVAILABLE = f"cannot build or load the C search: {exc}"
    return _lib


def _suffix() -> str:
    return ".dll" if sys.platform == "win32" else ".so"


def search(
    size: Sequence[int],
    s0: Sequence[int],
    s1: Sequence[int],
    nsec: int,
    order: Sequence[int],
    twin_prev: Sequence[int],
    keys: tuple[int, bool, Sequence[int], Sequence[int], Sequence[int]],
    cap: int,
    node_limit: int = 0,
    seconds: float = 1e9,
) -> tuple[int, list[int], int, int]:
    """Same contract as canonical_ref.search."""
    lib = load()
    if lib is None:
        raise RuntimeError(UNAVAILABLE or "the C search is unavailable")
    n = len(size)
    heuristic, resort, width, area, tie = keys

    def arr(ctype, values):
        return (ctype * max(1, len(values)))(*values)

    off = (ctypes.c_int64 * max(1, n))()
    counters = (ctypes.c_int64 * 2)()
    result = lib.canonical_search(
        n, nsec, arr(ctypes.c_int64, size), arr(ctypes.c_int32, s0), arr(ctypes.c_int32, s1),
        arr(ctypes.c_int32, order), arr(ctypes.c_int32, twin_prev), heuristic, int(resort),
        arr(ctypes.c_int64, width), arr(ctypes.c_int64, area), arr(ctypes.c_int32, tie),
        cap, node_limit,
        min(seconds, 1e9), off, counters)
    if result == -2:
        raise MemoryError("canonical search: out of memory")
    return result, (list(off[:n]) if result == 1 else []), counters[0], counters[1]
