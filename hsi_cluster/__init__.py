"""hsicluster: unsupervised clustering of large hyperspectral scenes (SSCC).

The Python API (see docs/python-api.md)::

    import hsi_cluster as hc
    scene = hc.open_scene("scene.tif")           # lazy xarray (band, y, x)
    model = hc.train(scene, k=6)                 # preset "fast"; TrainConfig keys as keywords
    labels = model.predict(scene)                # xarray (y, x) with CRS/transform/nodata; .rio works
    model.predict(scene, output="labels.tif")    # large scenes: tiled, to a label COG
    hc.evaluate(labels, "gt.tif")                # the numbers of `hsicluster evaluate`
    hc.write_scene(scene.isel(x=slice(0, 500)), "crop.tif")  # a crop or edit to a file train reads
    model.save("m.ckpt"); model = hc.load_model("m.ckpt")

The names are imported on first use, so ``import hsi_cluster`` stays light (no torch).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ClusteringScores", "HsiClusterError", "Model", "__version__", "evaluate", "load_model", "open_scene",
           "score_clustering", "train", "write_scene"]

_LAZY = {"Model": "hsi_cluster.api", "load_model": "hsi_cluster.api", "open_scene": "hsi_cluster.io.scene",
         "ClusteringScores": "hsi_cluster.evaluate", "score_clustering": "hsi_cluster.evaluate",
         "HsiClusterError": "hsi_cluster.errors", "write_scene": "hsi_cluster.io.scene_file"}
#: Functions of other modules exported here whose messages name options as keyword arguments (``var='NAME'``).
_PYTHON_NAMED = {"open_scene", "write_scene"}

if TYPE_CHECKING:
    from hsi_cluster.api import Model, evaluate, load_model, train
    from hsi_cluster.errors import HsiClusterError
    from hsi_cluster.evaluate import ClusteringScores, score_clustering
    from hsi_cluster.io.scene import open_scene
    from hsi_cluster.io.scene_file import write_scene


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        if name in _PYTHON_NAMED:
            from hsi_cluster.errors import python_names

            value = python_names(value)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hsi_cluster' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package module, whose ``train`` and ``evaluate`` are the API functions.

    They share their names with the modules ``hsi_cluster.train`` and ``hsi_cluster.evaluate``. Importing
    such a module normally makes it the package attribute of that name; here the functions stay (the
    modules live on in ``sys.modules``: ``from hsi_cluster.train import train`` and
    ``monkeypatch.setattr(sys.modules["hsi_cluster.train"], ...)`` reach them), whatever was imported first.
    """

    @property
    def train(self) -> Any:
        from hsi_cluster.api import train

        return train

    @train.setter
    def train(self, module: Any) -> None:
        pass  # the import system recording the submodule hsi_cluster.train: the API function wins

    @property
    def evaluate(self) -> Any:
        from hsi_cluster.api import evaluate

        return evaluate

    @evaluate.setter
    def evaluate(self, module: Any) -> None:
        pass  # as for train


sys.modules[__name__].__class__ = _Package
