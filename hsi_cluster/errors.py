"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class HsiClusterError(Exception):
    """A problem the user can fix (bad input, bad option, existing output).

    The message names the file or option, the problem, and what to do.
    """


class SceneError(HsiClusterError):
    """A scene cannot be opened or is not a usable hyperspectral cube."""


class OutputError(HsiClusterError):
    """An output path cannot be written or already holds a result."""


class MetadataWarning(UserWarning):
    """Part of a scene's metadata contradicts the data and is not used (the CLI prints it as a warning)."""
