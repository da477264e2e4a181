"""Public test helpers: tiny synthetic hyperspectral scenes in every format ``open_scene`` reads.

Every writer takes a cube in the project's axis order ``(band, y, x)`` and returns a
:class:`SyntheticScene` that records what was written (values, CRS, transform, nodata, spectral
coordinates), so that a test can compare ``open_scene`` against the truth rather than against
another reader. Georeferenced scenes use a real CRS (EPSG:32633, UTM 33N) and a north-up transform
with 30 m pixels.

Reference computations (valid-pixel mask, per-band statistics) are written the plain numpy way,
independently of :mod:`hsi_cluster.stats`.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

#: The CRS of every georeferenced synthetic scene.
EPSG = 32633
#: Pixel size (metres) and upper-left corner of every georeferenced synthetic scene.
PIXEL_SIZE = 30.0
ORIGIN = (500_000.0, 4_100_000.0)

#: ENVI ``data type`` codes.
ENVI_DTYPES = {"uint8": 1, "int16": 2, "int32": 3, "float32": 4, "float64": 5, "uint16": 12, "uint32": 13,
               "int64": 14, "uint64": 15}

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class SyntheticScene:
    """What a helper wrote, as ground truth for the readers.

    Attributes:
        path: the file to pass to ``open_scene`` (for ENVI: the binary).
        cube: the values, ``(band, y, x)``, in the dtype stored in the file.
        crs: the CRS written, or None.
        transform: the affine transform written, or None when not georeferenced.
        nodata: the nodata value written, or None.
        wavelength_nm: band centres in nanometres (whatever unit the file used), or None.
        fwhm_nm: band widths in nanometres, or None.
        good_band: bool per band (from ``bbl``), or None.
        header: the ENVI ``.hdr`` path, if any.
        variable: the MATLAB variable name, if any.
    """

    path: Path
    cube: np.ndarray
    crs: CRS | None = None
    transform: Affine | None = None
    nodata: float | None = None
    wavelength_nm: np.ndarray | None = None
    fwhm_nm: np.ndarray | None = None
    good_band: np.ndarray | None = None
    header: Path | None = None
    variable: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.cube.shape)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# values


def utm_transform(pixel: float = PIXEL_SIZE, origin: tuple[float, float] = ORIGIN) -> Affine:
    """North-up transform with square ``pixel`` metres and upper-left corner ``origin``."""
    return Affine(pixel, 0.0, origin[0], 0.0, -pixel, origin[1])


def utm_crs() -> CRS:
    """EPSG:32633 as a rasterio CRS."""
    return CRS.from_epsg(EPSG)


def spectral_axis(n_bands: int, start: float = 400.0, stop: float = 2500.0) -> tuple[np.ndarray, np.ndarray]:
    """Band centres and FWHM in nanometres, evenly spaced (exactly representable steps)."""
    wavelengths = np.round(np.linspace(start, stop, n_bands), 3)
    fwhm = np.full(n_bands, round((stop - start) / max(n_bands - 1, 1) * 1.25, 3))
    return wavelengths, fwhm


def synthetic_cube(bands: int = 6, height: int = 20, width: int = 24, dtype: str | np.dtype = "float32", *,
                   seed: int = 0, nan_pixels: int = 0, inf_pixels: int = 0, nodata: float | None = None,
                   nodata_pixels: int = 0) -> np.ndarray:
    """A random ``(band, y, x)`` cube with optional invalid pixels.

    Values avoid ``nodata`` except where planted. For float dtypes ``nan_pixels`` pixels get NaN
    in one random band (another, every band), ``inf_pixels`` get +Inf or -Inf in one band;
    ``nodata_pixels`` pixels get ``nodata`` in one band (half of them: in all bands).

    Returns:
        the cube, C-contiguous, of ``dtype``.
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        cube = (rng.normal(500.0, 120.0, (bands, height, width))).astype(dtype)
    else:
        info = np.iinfo(dtype)
        low, high = max(info.min, -3000), min(info.max, 9000)
        cube = rng.integers(max(low, 1), high, (bands, height, width)).astype(dtype)
        if info.min < 0:
            cube[:, ::3, ::2] *= -1  # some negative values for signed types
    if nodata is not None:
        cube[cube == np.asarray(nodata).astype(dtype)] += 1

    n_pixels = height * width
    wanted = nan_pixels + inf_pixels + nodata_pixels
    if wanted > n_pixels:
        raise ValueError(f"cannot plant {wanted} invalid pixels in a {height}×{width} cube")
    chosen = rng.choice(n_pixels, size=wanted, replace=False)
    rows, cols = np.unravel_index(chosen, (height, width))
    pos = 0

    def plant(count: int, value: float) -> None:
        nonlocal pos
        for k in range(count):
            r, c = rows[pos], cols[pos]
            if k % 2 == 1:
                cube[:, r, c] = value
            else:
                cube[rng.integers(bands), r, c] = value
            pos += 1

    if (nan_pixels or inf_pixels) and not np.issubdtype(dtype, np.floating):
        raise ValueError("NaN/Inf pixels need a floating-point dtype")
    plant(nan_pixels, np.nan)
    for k in range(inf_pixels):
        r, c = rows[pos], cols[pos]
        cube[rng.integers(bands), r, c] = np.inf if k % 2 == 0 else -np.inf
        pos += 1
    if nodata_pixels:
        if nodata is None:
            raise ValueError("nodata_pixels needs nodata")
        plant(nodata_pixels, nodata)
    return np.ascontiguousarray(cube)


def reference_valid_mask(cube: np.ndarray, nodata: float | None = None,
                         good_band: np.ndarray | None = None) -> np.ndarray:
    """Plain-numpy valid mask ``(y, x)``: every (good) band finite, under 1e30 in magnitude and different from nodata (a nodata of 0:
    fewer than half the good bands 0), and, with 20 good bands or more, not the same value in all of them but 5 % (fill)."""
    bands = cube if good_band is None else cube[np.asarray(good_band, dtype=bool)]
    valid = np.ones(cube.shape[1:], dtype=bool)
    zeros = np.zeros(cube.shape[1:], dtype=int)
    for plane in bands:
        if np.issubdtype(plane.dtype, np.floating):
            valid &= np.isfinite(plane) & (np.abs(plane) < 1e30)  # ±1e30 and beyond: float fill
        if nodata == 0:
            zeros += plane == 0
        elif nodata is not None and not np.isnan(nodata):
            valid &= plane != nodata
    if nodata == 0:
        valid &= zeros < len(bands) / 2
    if len(bands) >= 20:  # fill: one value (then the median) in all but 5 % of the bands
        median = np.sort(bands, axis=0)[len(bands) // 2]
        valid &= (bands == median).sum(axis=0) < len(bands) - int(0.05 * len(bands))
    return valid


def reference_stats(cube: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Per-band ``mean``, ``std`` (ddof=0), ``min``, ``max`` and ``count`` over valid pixels (float64)."""
    pixels = cube[:, valid].astype(np.float64)
    count = np.full(cube.shape[0], pixels.shape[1])
    if pixels.shape[1] == 0:
        nan = np.full(cube.shape[0], np.nan)
        return {"mean": nan, "std": nan, "min": nan, "max": nan, "count": count}
    return {"mean": pixels.mean(axis=1), "std": pixels.std(axis=1, ddof=0), "min": pixels.min(axis=1),
            "max": pixels.max(axis=1), "count": count}


# --------------------------------------------------------------------------------------------
# writers


def write_geotiff(path: str | os.PathLike[str], cube: np.ndarray, *, crs: CRS | None | str = "default",
                  transform: Affine | None = None, nodata: float | None = None, tiled: bool = False,
                  blocksize: int = 16, compress: str | None = None, interleave: str = "pixel",
                  wavelength_nm: Sequence[float] | None = None, fwhm_nm: Sequence[float] | None = None,
                  wavelength_units: str = "nanometers", good_band: Sequence[bool] | None = None,
                  driver: str = "GTiff", scales: Sequence[float] | None = None,
                  offsets: Sequence[float] | None = None, rows_per_strip: int | None = None) -> SyntheticScene:
    """Write ``cube`` ``(band, y, x)`` as a GeoTIFF with a real CRS (EPSG:32633 unless ``crs=None``).

    Untiled, it is written in strips of ``rows_per_strip`` rows (default: GDAL's).

    Per-band GDAL metadata items ``wavelength``, ``fwhm`` and ``wavelength_units`` are written in
    ``wavelength_units`` (``"micrometers"`` divides the nm values by 1000); ``good_band`` as 0/1;
    ``scales`` / ``offsets`` as GDAL's band SCALE / OFFSET (``cube`` holds the stored values).
    """
    path = Path(path)
    crs = utm_crs() if crs == "default" else crs
    if transform is None and crs is not None:
        transform = utm_transform()
    bands, height, width = cube.shape
    profile: dict[str, Any] = {"driver": driver, "width": width, "height": height, "count": bands,
                               "dtype": str(cube.dtype), "interleave": interleave}
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    if tiled:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    elif rows_per_strip is not None:
        profile["blockysize"] = rows_per_strip
    if compress:
        profile["compress"] = compress
    scale = 1000.0 if wavelength_units.lower().startswith("micro") else 1.0
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(cube)
        if scales is not None:
            dst.scales = tuple(float(v) for v in scales)
        if offsets is not None:
            dst.offsets = tuple(float(v) for v in offsets)
        for i in range(bands):
            tags: dict[str, str] = {}
            if wavelength_nm is not None:
                tags["wavelength"] = repr(float(wavelength_nm[i]) / scale)
                tags["wavelength_units"] = wavelength_units
            if fwhm_nm is not None:
                tags["fwhm"] = repr(float(fwhm_nm[i]) / scale)
            if good_band is not None:
                tags["good_band"] = "1" if good_band[i] else "0"
            if tags:
                dst.update_tags(i + 1, **tags)
    return SyntheticScene(path=path, cube=cube, crs=crs, transform=transform, nodata=nodata,
                          wavelength_nm=None if wavelength_nm is None else np.asarray(wavelength_nm, float),
                          fwhm_nm=None if fwhm_nm is None or wavelength_nm is None else np.asarray(fwhm_nm, float),
                          good_band=None if good_band is None else np.asarray(good_band, bool))


def envi_header_text(fields: dict[str, Any]) -> str:
    """An ENVI header: ``ENVI`` then ``key = value`` lines; lists become ``{a, b, …}``."""
    lines = ["ENVI"]
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, np.ndarray)):
            value = "{" + ", ".join(str(v) for v in value) + "}"
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def envi_header_fields(*, samples: int, lines: int, bands: int, dtype: str | np.dtype, interleave: str = "bsq",
                       wavelength_nm: Sequence[float] | None = None, fwhm_nm: Sequence[float] | None = None,
                       wavelength_units: str = "Nanometers", bbl: Sequence[bool] | None = None,
                       nodata: float | None = None, georeferenced: bool = True) -> dict[str, Any]:
    """The fields of a well-formed ENVI header (edit the dict to make a malformed one)."""
    scale = 1000.0 if wavelength_units.lower().startswith("micro") else 1.0

    def fmt(values: Sequence[float]) -> list[str]:
        return [f"{float(v) / scale:.9g}" for v in values]

    fields: dict[str, Any] = {
        "description": "{synthetic test scene}",
        "samples": samples, "lines": lines, "bands": bands, "header offset": 0,
        "file type": "ENVI Standard", "data type": ENVI_DTYPES[np.dtype(dtype).name],
        "interleave": interleave, "byte order": 0,
    }
    if georeferenced:
        west, north = ORIGIN
        fields["map info"] = (f"{{UTM, 1.000, 1.000, {west:.3f}, {north:.3f}, {PIXEL_SIZE:.3f}, {PIXEL_SIZE:.3f}, "
                              "33, North, WGS-84, units=Meters}")
    if wavelength_nm is not None:
        fields["wavelength units"] = wavelength_units
        fields["wavelength"] = fmt(wavelength_nm)
    if fwhm_nm is not None:
        fields["fwhm"] = fmt(fwhm_nm)
    if bbl is not None:
        fields["bbl"] = [1 if b else 0 for b in bbl]
    if nodata is not None:
        fields["data ignore value"] = f"{nodata:g}"
    return fields


def interleave_array(cube: np.ndarray, interleave: str) -> np.ndarray:
    """``(band, y, x)`` → the on-disk axis order of an ENVI interleave."""
    order = {"bsq": (0, 1, 2), "bil": (1, 0, 2), "bip": (1, 2, 0)}[interleave.lower()]
    return np.ascontiguousarray(cube.transpose(order))


def write_envi(path: str | os.PathLike[str], cube: np.ndarray, *, interleave: str = "bsq",
               wavelength_nm: Sequence[float] | None = None, fwhm_nm: Sequence[float] | None = None,
               wavelength_units: str = "Nanometers", bbl: Sequence[bool] | None = None,
               nodata: float | None = None, georeferenced: bool = True,
               header_fields: dict[str, Any] | None = None) -> SyntheticScene:
    """Write ``cube`` as an ENVI binary at ``path`` (e.g. ``scene.img``) plus a hand-written ``.hdr``.

    The header gets ``wavelength``/``fwhm`` in ``wavelength_units`` (Micrometers divides the nm
    values by 1000), ``bbl``, ``data ignore value`` and, when ``georeferenced``, a UTM 33N
    ``map info`` (GDAL reads it as EPSG:32633). ``header_fields`` overrides or adds fields
    (a value of None removes one).
    """
    path = Path(path)
    bands, height, width = cube.shape
    little = cube.astype(cube.dtype.newbyteorder("<"), copy=False)
    interleave_array(little, interleave).tofile(path)
    fields = envi_header_fields(samples=width, lines=height, bands=bands, dtype=cube.dtype, interleave=interleave,
                                wavelength_nm=wavelength_nm, fwhm_nm=fwhm_nm, wavelength_units=wavelength_units,
                                bbl=bbl, nodata=nodata, georeferenced=georeferenced)
    fields.update(header_fields or {})
    header = path.with_suffix(".hdr")
    header.write_text(envi_header_text(fields))
    return SyntheticScene(path=path, cube=cube, crs=utm_crs() if georeferenced else None,
                          transform=utm_transform() if georeferenced else None, nodata=nodata,
                          wavelength_nm=None if wavelength_nm is None else np.asarray(wavelength_nm, float),
                          fwhm_nm=None if fwhm_nm is None else np.asarray(fwhm_nm, float),
                          good_band=None if bbl is None else np.asarray(bbl, bool), header=header)


def write_npy(path: str | os.PathLike[str], cube: np.ndarray) -> SyntheticScene:
    """Save ``cube`` ``(band, y, x)`` as a ``.npy`` in the benchmark axis order ``(y, x, band)``."""
    path = Path(path)
    np.save(path, np.ascontiguousarray(cube.transpose(1, 2, 0)))
    return SyntheticScene(path=path, cube=cube)


def write_mat_v5(path: str | os.PathLike[str], cube: np.ndarray | None, *, var: str = "cube",
                 extra: dict[str, np.ndarray] | None = None) -> SyntheticScene:
    """MATLAB v5 file holding ``var`` = the cube as ``(y, x, band)`` plus ``extra`` variables."""
    import scipy.io

    path = Path(path)
    contents = dict(extra or {})
    if cube is not None:
        contents[var] = np.ascontiguousarray(cube.transpose(1, 2, 0))
    scipy.io.savemat(path, contents, format="5", do_compression=False)
    return SyntheticScene(path=path, cube=cube, variable=var)  # type: ignore[arg-type]


MATLAB_73_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."


def write_mat_v73(path: str | os.PathLike[str], cube: np.ndarray | None, *, var: str = "cube",
                  extra: dict[str, np.ndarray] | None = None) -> SyntheticScene:
    """MATLAB v7.3 (HDF5) file the way MATLAB writes it.

    A MATLAB array of shape ``(y, x, band)`` is column-major, so HDF5 sees it reversed:
    ``(band, x, y)``. The 512-byte user block starts with the MATLAB text header, which is what
    ``scipy.io`` looks at to recognise v7.3.
    """
    import h5py

    path = Path(path)
    contents = dict(extra or {})
    if cube is not None:
        contents[var] = np.ascontiguousarray(cube.transpose(1, 2, 0))
    with h5py.File(path, "w", userblock_size=512) as handle:
        for name, array in contents.items():
            array = np.asarray(array)
            dataset = handle.create_dataset(name, data=np.ascontiguousarray(array.T))
            dataset.attrs["MATLAB_class"] = np.bytes_({"float32": "single", "float64": "double", "int16": "int16",
                                                       "uint16": "uint16", "uint8": "uint8", "int32": "int32",
                                                       "int64": "int64"}.get(array.dtype.name, "double"))
    header = MATLAB_73_HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as raw:
        raw.write(header.ljust(512, b"\x00"))
    return SyntheticScene(path=path, cube=cube, variable=var)  # type: ignore[arg-type]


def truncate_file(path: str | os.PathLike[str], fraction: float = 0.5) -> int:
    """Cut ``path`` to ``fraction`` of its size; returns the new size."""
    size = int(Path(path).stat().st_size * fraction)
    os.truncate(path, size)
    return size


def edit_file(path: str | os.PathLike[str]) -> None:
    """Edit a text file as a user would: a newline appended (which an ENVI header's or an XML's reader ignores) and
    its modification time 1 s later than before, whatever the clock's resolution."""
    path = Path(path)
    mtime = path.stat().st_mtime_ns
    path.write_bytes(path.read_bytes() + b"\n")
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))


def write_big_envi_bsq(path: str | os.PathLike[str], *, bands: int, height: int, width: int,
                       dtype: str = "float32", georeferenced: bool = True) -> SyntheticScene:
    """A large ENVI BSQ scene written band by band, never holding more than one band in memory.

    Values are a cheap deterministic function of (band, row, col); a few pixels are NaN (float) so
    that the valid mask has work to do. ``cube`` of the result is an empty placeholder.
    """
    path = Path(path)
    dtype_ = np.dtype(dtype).newbyteorder("<")
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    base = (np.sin(rows * 0.01) * 300 + np.cos(cols * 0.013) * 200).astype(np.float32)
    with open(path, "wb") as out:
        for b in range(bands):
            plane = base + np.float32(b * 3)
            if np.issubdtype(dtype_, np.floating):
                plane[b % height, ::997] = np.nan
            out.write(plane.astype(dtype_).tobytes())
            del plane
    fields = envi_header_fields(samples=width, lines=height, bands=bands, dtype=dtype, interleave="bsq",
                                wavelength_nm=spectral_axis(bands)[0], georeferenced=georeferenced)
    header = path.with_suffix(".hdr")
    header.write_text(envi_header_text(fields))
    return SyntheticScene(path=path, cube=np.empty((0, 0, 0), dtype), header=header,
                          crs=utm_crs() if georeferenced else None)


# --------------------------------------------------------------------------------------------
# processes


def python_module_command(*args: str) -> list[str]:
    """``python -m hsi_cluster ARGS`` with the running interpreter."""
    return [sys.executable, "-m", "hsi_cluster", *args]


def default_sigint() -> None:
    """``preexec_fn`` for a child that must turn Ctrl-C into KeyboardInterrupt even if we ignore SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class ChildRun:
    """Outcome of :func:`run_measured`.

    ``peak_rss_bytes`` is the child's own high-water mark (``VmHWM`` reported by the child at exit
    when launched through :func:`measured_cli_command`), else the largest RSS seen by polling.
    ``polled_peak_rss_bytes`` is the polling figure; ``ru_maxrss_bytes`` is ``wait4``'s, which on
    Linux also counts the parent's memory shared between fork and exec, so it is only an upper bound.
    """

    returncode: int
    peak_rss_bytes: int
    polled_peak_rss_bytes: int
    ru_maxrss_bytes: int
    wall_s: float
    stdout: str
    stderr: str


_VMHWM_TAG = "HSI_TEST_VMHWM_KB"
_MEASURED_CLI = f"""
import atexit, sys
def _report():
    try:
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('VmHWM:'):
                    sys.stderr.write('{_VMHWM_TAG} ' + line.split()[1] + '\\n')
    except OSError:
        pass
atexit.register(_report)
sys.argv[0] = 'hsicluster'
from hsi_cluster.cli import main
main()
"""


def measured_cli_command(*args: str) -> list[str]:
    """``hsicluster ARGS`` run by the current interpreter, reporting its peak RSS (VmHWM) at exit."""
    return [sys.executable, "-c", _MEASURED_CLI, *args]


def run_measured(command: Sequence[str], *, timeout: float = 600.0, env: dict[str, str] | None = None,
                 poll_s: float = 0.02) -> ChildRun:
    """Run ``command``, polling its RSS, and collect its exit status, output and peak memory."""
    import tempfile

    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a test dependency
        psutil = None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(command), stdout=out, stderr=err, env=env)
        handle = psutil.Process(proc.pid) if psutil else None
        polled = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if handle is not None:
                try:
                    polled = max(polled, handle.memory_info().rss)
                except psutil.Error:
                    pass
            if time.perf_counter() - start > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(poll_s)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    hwm = [int(line.split()[1]) * 1024 for line in stderr.splitlines() if line.startswith(_VMHWM_TAG)]
    stderr = "\n".join(line for line in stderr.splitlines() if not line.startswith(_VMHWM_TAG))
    scale = 1 if sys.platform == "darwin" else 1024
    return ChildRun(proc.returncode, hwm[-1] if hwm else polled, polled, int(usage.ru_maxrss) * scale, wall,
                    stdout, stderr)


def tree_snapshot(root: str | os.PathLike[str]) -> dict[str, bytes]:
    """Relative path → bytes of every file under ``root`` (to check a store was left unchanged)."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def listing(folder: str | os.PathLike[str]) -> list[str]:
    """Names in ``folder``, sorted."""
    return sorted(p.name for p in Path(folder).iterdir())


def iter_formats() -> Iterable[str]:
    """Names of the synthetic formats the ``scene_factory`` fixture can write."""
    return ("geotiff", "geotiff-tiled", "envi-bsq", "envi-bil", "envi-bip", "npy", "mat-v5", "mat-v7.3", "netcdf",
            "emit")


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(script: str, *, imports: Iterable[str] = ()) -> Iterator[Any]:
    """For a module fixture: the benchmark ``benchmarks/<script>`` loaded as a module; afterwards the
    modules it imported from ``benchmarks/`` (``imports``) are dropped from ``sys.modules``."""
    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", BENCHMARKS / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for name in (spec.name, *imports):
            sys.modules.pop(name, None)


WGS84_WKT = ('GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],'
             'UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]')
#: EMIT-like map grid: (x0, dx, 0, y0, 0, dy) in GDAL order, degrees.
EMIT_GEOTRANSFORM = (-118.0, 0.0005, 0.0, 34.0, 0.0, -0.0005)


def emit_lookup(swath_rows: int, swath_cols: int, map_shape: tuple[int, int],
                offset: tuple[int, int] = (3, 2)) -> tuple[np.ndarray, np.ndarray]:
    """A geometry lookup table ``(glt_x, glt_y)`` (1-based, 0 = no pixel): the swath shifted by ``offset``
    on the map and mirrored left-right, so a reader that ignores it or applies it the wrong way round fails."""
    glt_x, glt_y = np.zeros(map_shape, np.int32), np.zeros(map_shape, np.int32)
    rows, cols = np.indices(map_shape)
    source_row, source_col = rows - offset[0], swath_cols - 1 - (cols - offset[1])
    inside = (source_row >= 0) & (source_row < swath_rows) & (source_col >= 0) & (source_col < swath_cols)
    glt_y[inside], glt_x[inside] = source_row[inside] + 1, source_col[inside] + 1
    return glt_x, glt_y


def emit_map(swath: np.ndarray, map_shape: tuple[int, int], offset: tuple[int, int] = (3, 2),
             fill: float = -9999.0) -> np.ndarray:
    """What the lookup table of :func:`emit_lookup` makes of ``swath`` (band, row, col): float32, NaN where no
    swath pixel falls and where the swath holds ``fill``."""
    glt_x, glt_y = emit_lookup(swath.shape[1], swath.shape[2], map_shape, offset)
    hit = glt_x > 0
    out = np.full((swath.shape[0], *map_shape), np.nan, np.float32)
    out[:, hit] = swath[:, glt_y[hit] - 1, glt_x[hit] - 1]
    return np.where(out == fill, np.nan, out)


def write_emit_netcdf(path: str | os.PathLike[str], swath: np.ndarray, *, map_shape: tuple[int, int],
                      offset: tuple[int, int] = (3, 2), good: Sequence[int] | None = None,
                      fill: float = -9999.0) -> SyntheticScene:
    """A NetCDF-4 file laid out as NASA EMIT's L2A reflectance: ``reflectance(downtrack, crosstrack, bands)``
    with ``_FillValue``, groups ``sensor_band_parameters`` (wavelengths, fwhm, good_wavelengths) and
    ``location`` (the lookup table of :func:`emit_lookup`), file-wide ``geotransform`` and ``spatial_ref``.

    ``swath``: (band, row, col); ``cube`` of the result is the map a reader should return (:func:`emit_map`).
    """
    import xarray as xr

    path = Path(path)
    n_bands, rows, cols = swath.shape
    wavelength, fwhm = spectral_axis(n_bands)
    root = xr.Dataset({"reflectance": (("downtrack", "crosstrack", "bands"), swath.transpose(1, 2, 0),
                                       {"units": "unitless"})},
                      attrs={"geotransform": np.array(EMIT_GEOTRANSFORM), "spatial_ref": WGS84_WKT})
    root.to_netcdf(path, engine="h5netcdf", encoding={"reflectance": {"_FillValue": swath.dtype.type(fill)}})
    bands = xr.Dataset({"wavelengths": ("bands", wavelength, {"units": "nm"}), "fwhm": ("bands", fwhm),
                        "good_wavelengths": ("bands", np.asarray(good if good is not None else [1] * n_bands,
                                                                 np.uint8))})
    bands.to_netcdf(path, group="sensor_band_parameters", mode="a", engine="h5netcdf")
    glt_x, glt_y = emit_lookup(rows, cols, map_shape, offset)
    glt_x[::5], glt_y[::5] = -glt_x[::5], -glt_y[::5]  # "filled from the nearest swath pixel": the same pixel
    xr.Dataset({"glt_x": (("ortho_y", "ortho_x"), glt_x), "glt_y": (("ortho_y", "ortho_x"), glt_y)}).to_netcdf(
        path, group="location", mode="a", engine="h5netcdf")
    return SyntheticScene(path=path, cube=emit_map(swath, map_shape, offset, fill))


def write_netcdf(path: str | os.PathLike[str], variables: dict[str, tuple[tuple[str, ...], np.ndarray]], *,
                 coords: dict[str, tuple[str, np.ndarray, dict[str, Any]]] | None = None,
                 attrs: dict[str, dict[str, Any]] | None = None, engine: str = "h5netcdf") -> Path:
    """A NetCDF file of ``variables`` (name → (dims, values)) with 1-D ``coords`` (name → (dim, values, attrs))
    and per-variable ``attrs``; ``engine="scipy"`` writes classic NetCDF 3."""
    import xarray as xr

    dataset = xr.Dataset({name: (dims, values, (attrs or {}).get(name, {})) for name, (dims, values) in variables.items()},
                         coords={name: (dim, values, extra) for name, (dim, values, extra) in (coords or {}).items()})
    dataset.to_netcdf(path, engine=engine)
    return Path(path)
