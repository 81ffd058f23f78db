"""Atomic writes: every artifact appears complete under its final name, or not at all.

Files are written to a temporary name in the destination folder and renamed,
which is atomic on POSIX file systems. Directories are assembled in a
temporary sibling folder and renamed into place the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from hashee_cli.errors import HasheeError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_parent(path: Path) -> None:
    if path.parent.exists() and not path.parent.is_dir():
        raise HasheeError(f"cannot write {path}: {path.parent} is a file, not a directory")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temporary file beside ``path`` and rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    _check_parent(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file as 0600; give it the mode a plain open() would.
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        encoding = None if "b" in mode else "utf-8"
        newline = None if "b" in mode else ""
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as handle:
        handle.write(text)


def write_csv(path: str | os.PathLike, frame: pd.DataFrame, sep: str = ",") -> None:
    """Write a DataFrame to ``path`` atomically, without the index."""
    with atomic_file(path) as handle:
        frame.to_csv(handle, index=False, sep=sep)


def append_csv_rows(path: str | os.PathLike, rows: pd.DataFrame) -> pd.DataFrame:
    """Append rows to the CSV at ``path`` (creating it if needed) and return the whole table.

    Columns are the union of the old and new ones, so runs with different
    metrics can share one file. The file is rewritten atomically.
    """
    path = Path(path)
    if path.exists():
        try:
            old = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise HasheeError(
                f"cannot append to {path}: it is not a readable CSV file ({error}); "
                "choose another output path or pass --overwrite"
            ) from error
        rows = pd.concat([old, rows], ignore_index=True, sort=False)
    write_csv(path, rows)
    return rows


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` when the block succeeds.

    An existing ``path`` is an error unless ``overwrite`` is set. Then it is
    moved aside and deleted only once the new directory is in place, so a
    failure at any point leaves the old one intact.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise HasheeError(f"output directory {path} already exists; choose another path or pass --overwrite")
    _check_parent(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp_dir, 0o777 & ~_current_umask())
    try:
        yield tmp_dir
        backup = None
        if path.exists():
            backup = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, backup)
        os.replace(tmp_dir, path)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
