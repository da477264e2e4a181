"""Reading 2-D label maps (cluster labels or ground truth) from rasters, ``.npy`` or ``.mat``."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from hsi_cluster.errors import SceneError


def _single_2d(path: Path, arrays: dict[str, tuple[int, ...]], var: str | None) -> str:
    if var is not None:
        if var not in arrays:
            raise SceneError(f"{path}: no variable {var!r}; it holds {', '.join(arrays) or 'nothing'}")
        return var
    planes = [name for name, shape in arrays.items() if len(shape) == 2]
    if len(planes) != 1:
        listing = ", ".join(f"{n} {s}" for n, s in arrays.items()) or "no variables"
        raise SceneError(f"{path}: expected exactly one 2-D label array, found {listing}; choose with --var NAME")
    return planes[0]


def read_label_map(path: str | os.PathLike[str], *, var: str | None = None) -> tuple[np.ndarray, int | None]:
    """Read a label map.

    Args:
        path: single-band raster (GeoTIFF, ENVI…), ``.npy`` 2-D array or MATLAB ``.mat``.
        var: variable name in a ``.mat`` file holding several 2-D arrays.

    Returns:
        ``(labels, nodata)``: integer array (y, x) and the raster's nodata value (None if unset).

    Raises:
        SceneError: missing file, unreadable file, or not a single 2-D map.
    """
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise SceneError(f"{path}: no such file; check the path")
    suffix = path.suffix.lower()
    nodata = None
    try:
        if suffix == ".npy":
            labels = np.load(path, allow_pickle=False)
        elif suffix == ".mat":
            import scipy.io

            try:
                shapes = {name: tuple(shape) for name, shape, _ in scipy.io.whosmat(path)}
                name = _single_2d(path, shapes, var)
                labels = scipy.io.loadmat(path, variable_names=[name])[name]
            except NotImplementedError:
                import h5py

                with h5py.File(path, "r") as handle:
                    shapes = {n: tuple(reversed(d.shape)) for n, d in handle.items() if isinstance(d, h5py.Dataset)}
                    labels = handle[_single_2d(path, shapes, var)][...].T
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as dataset:
                    if dataset.count != 1:
                        raise SceneError(f"{path}: has {dataset.count} bands; a label map has exactly one")
                    labels = dataset.read(1)
                    nodata = dataset.nodata
    except (RasterioIOError, ValueError, OSError) as exc:
        raise SceneError(f"{path}: cannot read a label map ({str(exc).splitlines()[0]}); check the file") from exc
    if labels.ndim != 2:
        raise SceneError(f"{path}: label map has shape {labels.shape}; expected a 2-D (y, x) array")
    return labels, None if nodata is None else int(nodata)
