"""Writes that are all or nothing: a reader never sees a half-written output file.

Each file goes to a temp file in the same folder and is renamed over the target
(rename is atomic within a filesystem), so a failure part-way leaves the old
file, or none, never a truncated one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import PlannerError


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                   dir=target.parent if str(target.parent) else ".")
    except OSError as exc:
        raise PlannerError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        _unlink(tmp)
        raise PlannerError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        _unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when a and b name one file (b need not exist)."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()
