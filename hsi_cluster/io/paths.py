"""Scene arguments to paths: quoted glob patterns expanded, sidecar files skipped, repeats dropped."""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from hsi_cluster.errors import SceneError, counted
from hsi_cluster.io.enmap import is_product_layer

#: Files next to a raster that a pattern such as ``archive/*`` matches but that are not scenes.
SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk", ".tfw", ".prj", ".xml", ".json", ".txt", ".md5", ".sha1", ".sha256",
                    ".sha512")
#: Names of the binary beside an ENVI header, in the order the reader looks for them (the first that
#: exists is the scene's data; a glob skips the header when one of them exists), each in lower or upper case
#: (an EnMAP product's ``.BSQ`` beside its ``.HDR``).
ENVI_BINARY_SUFFIXES = ("", ".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ".bin")


#: Files beside an ENVI header that are not its binary (besides sidecars): other headers, archives, pictures, outputs.
_NOT_ENVI_BINARY = (".hdr", ".zip", ".gz", ".tar", ".png", ".jpg", ".tif", ".tiff", ".log", ".zarr", ".ckpt",
                    ".partial")


def envi_binary_beside(header: Path) -> tuple[Path | None, list[Path]]:
    """The binary of an ENVI header: the first of :data:`ENVI_BINARY_SUFFIXES` that exists, else the one other file
    of the header's name (a sensor's own suffix: AVIRIS' ``.rfl``, ``.rdn``); None when there is none or several,
    with the candidates found."""
    for suffix in ENVI_BINARY_SUFFIXES:
        candidate = existing_with_suffix(header, suffix)
        if candidate is not None and candidate != header:
            return candidate, [candidate]
    expected = _envi_data_bytes(header)
    others = [other for other in sorted(header.parent.glob(f"{glob.escape(header.stem)}.*"))
              if other != header and other.is_file() and not other.name.lower().endswith(SIDECAR_SUFFIXES + _NOT_ENVI_BINARY)
              and expected is not None and other.stat().st_size >= expected]  # not a checksum, note or backup
    return (others[0] if len(others) == 1 else None), others


#: Bytes per value of each ENVI ``data type`` code.
_ENVI_TYPE_BYTES = {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 9: 16, 12: 2, 13: 4, 14: 8, 15: 8}


def _envi_data_bytes(header: Path) -> int | None:
    """The size of the binary an ENVI header describes (``header offset`` + samples × lines × bands × value size),
    or None when the header does not say."""
    try:
        text = header.read_text(errors="replace")
    except OSError:
        return None
    fields = {key.strip().lower(): value.strip() for key, _, value in
              (line.partition("=") for line in text.splitlines()) if value}
    try:
        values = [int(fields[key]) for key in ("samples", "lines", "bands")]
        size = _ENVI_TYPE_BYTES[int(fields["data type"])]
        offset = int(fields.get("header offset", "0"))
    except (KeyError, ValueError):
        return None
    return offset + values[0] * values[1] * values[2] * size


def existing_with_suffix(path: Path, suffix: str) -> Path | None:
    """``path`` with ``suffix`` in lower case, else in upper case, whichever is a file; or None."""
    for candidate in dict.fromkeys((path.with_suffix(suffix.lower()), path.with_suffix(suffix.upper()))):
        if candidate.is_file():
            return candidate
    return None


def expand_scene_paths(patterns: Iterable[str | os.PathLike[str]], *, log: Callable[[str], None] | None = None,
                       exclude: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """Scenes named by paths and glob patterns, in the order given, each once.

    An argument that exists is taken literally (even if its name holds ``*``, ``?`` or ``[``).
    Otherwise an argument with glob characters is expanded with :func:`glob.glob` (``**`` matches
    any number of folders), its matches sorted by name, skipping what is not a scene of its own
    (GDAL sidecar files, an ENVI header whose binary exists, the quality layers and quicklooks of an EnMAP
    product, folders other than ``*.zarr`` stores, anything inside a store).
    Rasters that hsicluster wrote (label and confidence GeoTIFFs) are left out, globbed or named, and counted
    in ``log``. A path that does not exist, or names a folder that is not a store, is refused. A file named
    twice (by two patterns, or two paths such as ``a.tif`` and ``./x/../a.tif`` or a link) is kept where
    it first appears.

    Args:
        patterns: paths and patterns, e.g. ``["archive/*.tif", "extra/scene.zarr"]``; ``~`` is expanded.
        log: told how many rasters hsicluster wrote were left out, and how many paths named a file already
            named, when some did, and how many scenes ``exclude`` left out.
        exclude: paths and patterns (as ``patterns``; matching nothing is no error) of files to leave out, such as
            a scene of an archive that cannot be labelled.

    Returns:
        absolute paths.

    Raises:
        SceneError: a pattern matches no scene, a path names nothing or a plain folder (one line naming it).
    """
    found: dict[Path, Path] = {}  # the file itself (links and '..' resolved) -> the path as first given
    named = ours = 0
    ours_named = ""  # the first path named that is a raster hsicluster wrote
    for pattern in patterns:
        text = os.path.expanduser(os.fspath(pattern))
        if not os.path.lexists(text) and glob.has_magic(text):
            candidates = [Path(p) for p in sorted(glob.glob(text, recursive=True)) if is_scene_match(Path(p))]
            matches = [path for path in candidates if not written_by_hsicluster_glob(path)]
            ours += len(candidates) - len(matches)
            if not matches:
                what = "only rasters that hsicluster wrote (labels, confidence)" if candidates else "no scene"
                raise SceneError(f"{os.fspath(pattern)}: the pattern matches {what}; check it (and quote it so "
                                 "that the shell passes it on unexpanded)")
        elif written_by_hsicluster_glob(Path(text)):  # a shell-expanded glob names earlier outputs one by one
            ours += 1
            ours_named = ours_named or os.fspath(pattern)
            continue
        else:
            _check_named_scene(Path(text), os.fspath(pattern))
            matches = [Path(text)]
        for match in matches:
            found.setdefault(match.resolve(), _plain_absolute(match))
        named += len(matches)
    if not found and ours_named:
        raise SceneError(f"{ours_named}: a raster that hsicluster wrote (cluster labels or confidence), not a scene; "
                         "pass the hyperspectral scene itself")
    if log is not None and ours:
        log(f"left out {counted(ours, 'raster')} that hsicluster wrote (cluster labels, confidence), not scenes")
    if log is not None and named > len(found):
        log(f"{named - len(found)} of the {named} paths matched name a file already matched (by another pattern, "
            f"or through a link): {counted(len(found), 'scene')}, each taken once")
    excluded = ExcludedScenes(exclude)
    left_out = [resolved for resolved, given in found.items() if given in excluded]
    unused = excluded.unused(found.values())
    if log is not None and unused:
        log(f"warning: --exclude {', '.join(repr(p) for p in unused)} matched none of the scenes (a path or pattern "
            "names files from the current folder, a bare name or pattern such as '*bad*' any scene's file name)")
    if left_out:
        for resolved in left_out:
            del found[resolved]
        if not found:
            raise SceneError(f"every scene matched is excluded ({len(left_out)} by --exclude); check the patterns")
        if log is not None:
            names = ", ".join(found_name.name for found_name in left_out[:3]) + (", …" if len(left_out) > 3 else "")
            log(f"left out {counted(len(left_out), 'scene')} matching --exclude ({names})")
    return list(found.values())


class ExcludedScenes:
    """Which scenes ``--exclude`` (or a pipeline step's ``exclude``) leaves out.

    A path or glob pattern names files as the shell would (``**`` recursive, ``~`` expanded, relative ones from
    ``base`` when given); a pattern without a folder part (``'*fewbands*'``, ``bad.tif``) also names every scene
    whose file name it matches, wherever the scene lies.
    """

    def __init__(self, patterns: Iterable[str | os.PathLike[str]], base: Path | None = None) -> None:
        self.patterns = [os.path.expanduser(os.fspath(pattern)) for pattern in patterns]
        self.files = {pattern: {Path(match).resolve() for match in glob.glob(
            os.path.normpath(base / pattern) if base is not None else pattern, recursive=True)}
            for pattern in self.patterns}

    def matching(self, path: Path) -> list[str]:
        """The patterns that name ``path`` (the scene's file, links and ``..`` resolved or not)."""
        resolved = path.resolve()
        return [pattern for pattern in self.patterns
                if resolved in self.files[pattern] or (os.sep not in pattern and "/" not in pattern
                                                      and fnmatch.fnmatchcase(path.name, pattern))]

    def __contains__(self, path: object) -> bool:
        return isinstance(path, Path) and bool(self.matching(path))

    def unused(self, scenes: Iterable[Path]) -> list[str]:
        """The patterns that name none of ``scenes`` (a mistyped ``--exclude`` does nothing: the caller warns)."""
        used = {pattern for scene in scenes for pattern in self.matching(scene)}
        return [pattern for pattern in self.patterns if pattern not in used]


def _plain_absolute(path: Path) -> Path:
    """``path`` made absolute, with ``.`` and ``..`` taken out where that names the same file (not through a link
    to a folder, where ``link/..`` is not the link's folder): the path messages and manifests show."""
    absolute = path.absolute()
    plain = Path(os.path.normpath(absolute))
    return plain if plain == absolute or (os.path.lexists(plain) and plain.resolve() == absolute.resolve()) else absolute


def _check_named_scene(path: Path, given: str) -> None:
    """A scene named by its path (not a pattern) exists and is not a plain folder: refused before any work, as a
    pattern that matches nothing is."""
    if not os.path.lexists(path):
        raise SceneError(f"{given}: no such file or directory; check the path")
    from hsi_cluster.io.store import is_store  # io.store reads zarr: imported on use

    if path.is_dir() and not is_scene_match(path) and not is_store(path):  # a .zarr folder: the reader says more
        folder = given.rstrip("/\\")
        raise SceneError(f"{given}: is a folder, not a scene or a store made by 'hsicluster ingest'; for the scenes in "
                         f"it pass a quoted pattern, '{folder}/*.tif' or '{folder}/**/*.tif'")


def written_by_hsicluster_glob(path: Path) -> bool:
    """A GeoTIFF that ``predict`` or ``batch`` wrote (its labels or confidence: tagged ``HSICLUSTER_K``), which a
    glob over an archive holding earlier outputs (``'archive/**/*.tif'`` with ``-o archive/labels``) also matches;
    left out of the scenes, whether the glob was expanded here or by the shell."""
    from hsi_cluster.io.labels import written_by_hsicluster  # io.labels reads scenes: imported on use

    return path.suffix.lower() in (".tif", ".tiff") and written_by_hsicluster(path)


def is_scene_match(path: Path) -> bool:
    """Whether a glob match stands for a scene (see :func:`expand_scene_paths`)."""
    if any(parent.suffix.lower() == ".zarr" for parent in path.parents):
        return False  # a file or folder inside a store (``archive/**`` descends into them)
    if path.is_dir():
        return path.suffix.lower() == ".zarr"
    name = path.name.lower()
    if name.endswith(SIDECAR_SUFFIXES) or is_product_layer(path):
        return False
    if name.endswith(".hdr"):
        return envi_binary_beside(path)[0] is None  # the binary stands for the scene
    return True
