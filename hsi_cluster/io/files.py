"""Small file utilities shared by the library: content hashes and atomic writes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for piece in iter(lambda: file.read(2**20), b""):
            digest.update(piece)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a hidden scratch path beside ``path``; rename it onto ``path`` when the block succeeds.

    The destination never holds a partial file: on an exception the scratch file is removed and
    ``path`` keeps its previous content (or stays absent). ``suffix`` keeps the extension a writer
    may look at (e.g. ".tmp.png" for matplotlib).
    """
    path = Path(path)
    scratch = path.with_name(f".{path.name}{suffix}")
    try:
        yield scratch
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as scratch:
        scratch.write_text(text)
