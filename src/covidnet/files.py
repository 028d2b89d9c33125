"""Writing results so that a reader never finds half a file, and JSON that has no NaN.

Every file the project writes whole (checkpoints, reports, JSON, run status, ONNX models) goes through
``atomic_write`` or ``atomic_path``: a temporary file in the same folder, then ``os.replace``, so the old
file or the new one is there, never a torn one. Neither torch nor NumPy is needed to import this.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends without
    an error, removed when it raises. ``mode``: the file's permissions (mkstemp's are 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def jsonable(x):
    """NaN and ±inf become None (JSON has no NaN); NumPy scalars and arrays become Python ones; paths
    become strings."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist") and hasattr(x, "dtype"):  # a NumPy array or scalar
        return jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def to_json(obj, indent: int | None = 2) -> str:
    """Strict JSON (NaN -> null)."""
    return json.dumps(jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def write_json(path: str | Path, obj) -> Path:
    """``obj`` as strict JSON, written atomically (the folder is made when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, to_json(obj) + "\n")


def file_id(path: str | Path, arch: str) -> str:
    """``arch@`` and the first 12 hex digits of the file's SHA-256: which model answered."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{arch}@{h.hexdigest()[:12]}"
