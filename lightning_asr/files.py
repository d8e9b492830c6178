"""Files that several processes share: a writer whose reader never sees half a file (the text goes to a temporary
file in the same folder, then is renamed over the target, atomic on POSIX, so two writers of the same file leave one
whole copy), and a lock one process at a time holds."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, suffix=".partial", delete=False) as f:
        f.write(text)
    os.replace(f.name, path)
    return path


@contextmanager
def held_lock(path: str | Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold the file lock at ``path`` (``filelock``: released when the block ends or its process dies; the file
    stays, as filelock's do). Where another process holds it, ``on_wait()`` says so first, then this one waits."""
    from filelock import FileLock, Timeout

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        on_wait()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
