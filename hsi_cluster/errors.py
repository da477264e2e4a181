"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations

import errno
import functools
import numbers
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar, cast


class HsiClusterError(Exception):
    """A problem the user can fix (bad input, bad option, existing output).

    The message names the file or option, the problem, and what to do.
    """


class SceneError(HsiClusterError):
    """A scene cannot be opened or is not a usable hyperspectral cube."""


class OutputError(HsiClusterError):
    """An output path cannot be written or already holds a result."""


class ArgumentError(HsiClusterError, ValueError):
    """An argument of a Python API call that cannot work as given (also a ValueError)."""


class ArgumentTypeError(HsiClusterError, TypeError):
    """An argument of a Python API call of a type it does not take (also a TypeError)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's time limit, ``kill``): stops a command as Ctrl-C does, keeping its finished work."""


class MetadataWarning(UserWarning):
    """Part of a scene's metadata contradicts the data and is not used (the CLI prints it as a warning)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for a one-line error (its type's name when it has none).

    GDAL errors raised through rasterio often say only "Read failed. See previous exception for details.":
    then the cause's first line is given, which names the block and what failed.
    """
    if "previous exception" in str(exc) and (exc.__cause__ or exc.__context__) is not None:
        return first_line(exc.__cause__ or exc.__context__)  # type: ignore[arg-type]
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


#: How messages name the options they point to: "cli" (``--overwrite``) or "python" (``overwrite=True``), set by the
#: Python API around its calls (:func:`python_option_names`).
_OPTION_STYLE: ContextVar[str] = ContextVar("option_style", default="cli")
#: Keyword arguments of the Python API whose name is not the flag's; flags (switches) that take no value read True.
_KEYWORDS = {"-k": "k", "--overwrite": "overwrite=True", "--resume": "resume=True"}


def naming_python_options() -> bool:
    """Whether messages now name options as the Python API's keyword arguments (inside :func:`python_option_names`)."""
    return _OPTION_STYLE.get() == "python"


def option(flag: str, value: Any = None) -> str:
    """``flag`` (with ``value``) as the caller passes it: ``--tiles 7`` on the command line, ``tiles=7`` from Python
    inside :func:`python_option_names`."""
    if not naming_python_options():
        return flag if value is None else f"{flag} {value}"
    name = _KEYWORDS.get(flag, flag.lstrip("-").replace("-", "_"))
    return name if value is None else f"{name}={value!r}"


@contextmanager
def python_option_names() -> Iterator[None]:
    """Within it, :func:`option` names options as the Python API's keyword arguments."""
    token = _OPTION_STYLE.set("python")
    try:
        yield
    finally:
        _OPTION_STYLE.reset(token)


_Call = TypeVar("_Call", bound=Callable[..., Any])


def python_names(func: _Call) -> _Call:
    """Messages raised inside ``func`` (a Python API entry point) name options as its keyword arguments
    (``overwrite=True``, not ``--overwrite``)."""
    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        with python_option_names():
            return func(*args, **kwargs)
    return cast(_Call, call)


#: What starts a warning among the lines of a library log callback (indented in a pipeline's log).
WARNING_PREFIX = "warning: "


def log_warning(message: str) -> str | None:
    """The text of a log line that is a warning (``warning: …``), without the prefix; None for other lines."""
    line = message.lstrip()
    return line[len(WARNING_PREFIX):] if line.startswith(WARNING_PREFIX) else None


def whole_number(value: Any, what: str, *, hint: str = "a whole number") -> int:
    """``value`` as a plain int when it is a whole number of any integer type (numpy's included, bools not),
    else an :class:`HsiClusterError` saying ``what`` must be ``hint``. Floats are refused, even 64.0."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):  # numpy bools are not Integral
        return int(value)
    raise HsiClusterError(f"{what} must be {hint}, got {value!r}")


def number_ranges(numbers: Iterable[int]) -> str:
    """Sorted whole numbers as runs, for messages naming bands: ``[1, 2, 3, 7, 9, 10]`` → ``"1–3, 7, 9–10"``."""
    runs: list[list[int]] = []
    for number in (int(n) for n in numbers):
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ", ".join(f"{run[0]}–{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def counted(number: int, noun: str) -> str:
    """``1 scene``, ``2 scenes``: a count with its noun, plural when not one."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def storage_error(exc: BaseException) -> tuple[str, str] | None:
    """What stopped the writing and what to do, when ``exc`` or its causes say the disk or quota is full, a file
    outgrew the size limit (``ulimit -f``, the file system's largest file) or a name is too long, else None."""
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        writing = f" (writing {seen.filename})" if isinstance(seen, OSError) and seen.filename else ""
        if isinstance(seen, OSError) and seen.errno == errno.EFBIG or "File too large" in str(seen):
            return (f"a file grew past the largest size allowed{writing}",
                    "raise the limit (ulimit -f) or write to another file system")
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT) or \
                "No space left on device" in str(seen) or "Disk quota exceeded" in str(seen):
            return f"no space left on the device{writing}", "free some space"
        if isinstance(seen, OSError) and seen.errno == errno.ENAMETOOLONG:
            return f"a file name or path too long for the file system{writing}", "choose a shorter output path"
        seen = seen.__cause__ or seen.__context__
    return None
