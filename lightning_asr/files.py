"""Writing files so that a reader never sees half of one: the text goes to a temporary file in the same folder,
which is then renamed over the target (atomic on POSIX), so two writers of the same file leave one whole copy."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, suffix=".partial", delete=False) as f:
        f.write(text)
    os.replace(f.name, path)
    return path
