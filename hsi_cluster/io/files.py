"""Small file utilities shared by the library: content hashes, atomic writes, output-path checks."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from hsi_cluster.errors import OutputError, option


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


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (after resolving links; hard links too when both exist)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


#: Bytes an output's name may need beyond its own for the files written beside it (``.NAME.tmp.tif`` while it is
#: written, ``.NAME.partial.XXXXXXXX.tmp`` and ``NAME.restart-N`` for a checkpoint, ``NAME.partial.zarr`` while
#: interrupted, ``.NAME.lock``, GDAL's ``NAME.aux.xml``).
COMPANION_ROOM = 32


def check_name_length(path: Path, *, what: str = "the output", remedy: str = "choose a shorter name",
                      path_remedy: str = "choose a shorter path") -> None:
    """Refuse an output whose name or path, with those of the files written beside it, is longer than the file
    system allows, or a folder of its path whose name is (one line naming ``what`` it is and the ``remedy``; the
    system's "File name too long" came as an unexpected error, exit 1)."""
    try:
        folder = path.parent if path.parent.is_dir() else Path(path.anchor or ".")
        name_max, path_max = os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):  # a path the system cannot look at, or a system that does not tell: the usual limits
        name_max, path_max = 255, 4096
    for folder_name in path.parent.parts:
        if len(os.fsencode(folder_name)) > name_max:
            raise OutputError(f"{folder_name[:60]}…: a folder name in the path of {what} is "
                              f"{len(os.fsencode(folder_name))} bytes long, more than the file system takes "
                              f"({name_max}); {path_remedy}")
    for part, length, limit, fix in (("name", len(os.fsencode(path.name)), name_max, remedy),
                                     ("path", len(os.fsencode(str(path))), path_max - 1, path_remedy)):
        if length + COMPANION_ROOM > limit:
            raise OutputError(f"{str(path)[:60]}…: the {part} of {what} is {length} bytes long, and with the files "
                              f"written beside it the file system takes at most {limit - COMPANION_ROOM}; {fix}")


def check_output(path: Path, *, replace: bool, inputs: Mapping[str, Path] = {}, file_output: bool = True,
                 exists_hint: str | None = None, companion: bool = False) -> None:
    """Fail before any work unless ``path`` can take a new output.

    Refused, each with a one-line :class:`OutputError`: ``path`` is one of ``inputs`` (named by their
    role, e.g. ``{"the scene": …}``; even when replacing) or lies inside one (a store's folder); a folder where a file goes (``file_output``);
    an existing output unless ``replace``; a missing, non-folder or unwritable parent.
    """
    if not companion:  # a file beside an output (its .aux.xml) is within the room its output's check keeps
        check_name_length(path)
    for role, source in inputs.items():
        if same_file(path, source):
            raise OutputError(f"{path}: is {role}, an input of this command; choose another output path")
        if source.is_dir() and path.resolve().is_relative_to(source.resolve()):  # a file of an input store
            raise OutputError(f"{path}: lies inside {role} ({source}), an input of this command; choose another "
                              "output path")
    if file_output and path.is_dir():
        raise OutputError(f"{path}: is a folder; choose another output path")
    if path.exists() and not replace:
        hint = exists_hint if exists_hint is not None else f"pass {option('--overwrite')} to replace it"
        raise OutputError(f"{path}: already exists; {hint}")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{path}: {parent} is a file, not a folder; choose another output path")
    if not parent.is_dir():
        raise OutputError(f"{path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: folder {parent} is not writable; choose another output path")


def check_distinct_outputs(outputs: Mapping[str, Path | None]) -> None:
    """Fail when two of a command's outputs (named by option, e.g. ``{"-o": …, "--confidence": …}``)
    are one file."""
    given = [(name, path) for name, path in outputs.items() if path is not None]
    for k, (name, path) in enumerate(given):
        for other, other_path in given[k + 1:]:
            if same_file(path, other_path):
                raise OutputError(f"{path}: given as both {name} and {other}; choose different paths")


#: flock's answers that another process holds the lock; any other failure (ENOSYS, ENOLCK, EOPNOTSUPP: a network
#: file system without locks, Lustre without ``-o flock``) leaves the command unlocked rather than refused.
_HELD_ELSEWHERE = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


@contextmanager
def exclusive_lock(lock_file: Path, busy: Callable[[str], Exception], *, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created, holding this process's pid) while a command writes what
    it guards; a second command asking for it meanwhile gets ``busy(holder_pid)`` raised, before any work.

    POSIX ``flock``: the lock goes with the process, so a killed command leaves no stale lock (the file may stay;
    ``remove`` deletes it afterwards). Where there is no ``fcntl`` (Windows) or the file system has no locks,
    nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    for _ in range(100):  # a lock file removed by its holder between our open and our flock: open the new one
        handle = open(lock_file, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in _HELD_ELSEWHERE:
                handle.close()
                yield
                return
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise busy(holder) from exc
        try:
            current = os.stat(lock_file).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()
    else:
        raise busy("unknown")
    with handle:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            if remove:
                lock_file.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def output_lock_path(output: Path) -> Path:
    """The lock file of a command writing ``output``: ``.NAME.lock`` beside the file it names (through links)."""
    target = output.resolve()
    return target.with_name(f".{target.name}.lock")


def busy_output(output: Path) -> Callable[[str], OutputError]:
    """The refusal of a command whose ``output`` another one is writing (for :func:`exclusive_lock`)."""
    return lambda holder: OutputError(f"{output}: another hsicluster command is writing it (pid {holder}); wait for "
                                      "it to finish, or choose another output path")
