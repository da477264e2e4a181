"""Checkpoints: everything predict needs, saved so that loading never executes code.

A checkpoint is a ``torch.save`` of plain containers, numbers, strings and tensors only, and is
always read back with ``torch.load(..., weights_only=True)``: a crafted file cannot run code.
Files are written to a temporary name and renamed, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsi_cluster import __version__
from hsi_cluster.errors import HsiClusterError, first_line
from hsi_cluster.geo import PatchGeometry
from hsi_cluster.io.files import sha256_of
from hsi_cluster.model.backbones import backbone_geometry
from hsi_cluster.model.spectral_range import SpectralRange
from hsi_cluster.model.sscc import SSCC

CHECKPOINT_FORMAT = "hsicluster-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(HsiClusterError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the job."""


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        payload: the raw mapping (see :func:`make_payload`).
        path: where it was read from.
    """

    payload: dict[str, Any]
    path: Path

    @property
    def complete(self) -> bool:
        """True when training finished (False for a periodic mid-training checkpoint)."""
        return bool(self.payload.get("complete"))

    @property
    def n_clusters(self) -> int:
        return int(self.payload["model_config"]["n_clusters"])

    @property
    def in_bands(self) -> int:
        return int(self.payload["model_config"]["in_bands"])

    @property
    def wavelength(self) -> list[float] | None:
        return self.payload.get("wavelength")

    @property
    def backbone(self) -> str:
        """Name of the backbone ("dense" or "resnet")."""
        return str(self.payload["model_config"]["backbone"])

    @property
    def geometry(self) -> PatchGeometry:
        """Patch, halo and receptive field: the dense backbone's depth decides them; a ResNet's patch
        size is the one it was trained with."""
        config = self.payload["model_config"]
        fixed = backbone_geometry(self.backbone, config.get("backbone_kwargs") or {})
        return fixed if fixed is not None else PatchGeometry(int(self.payload["patch_size"]))

    @property
    def patch_size(self) -> int:
        """Side p of the patch that labels a pixel."""
        return self.geometry.patch_size

    @property
    def halo(self) -> int:
        """Pixels of context each tile is read with on every side, (p − 1) / 2."""
        return self.geometry.halo

    @property
    def receptive_field(self) -> int:
        """Side of the square of input pixels one label depends on."""
        return self.geometry.receptive_field

    @property
    def amp(self) -> bool:
        """Whether the model trained with mixed precision (predict then uses bf16 autocast on CUDA)."""
        return bool(self.payload["train_config"].get("amp"))

    @property
    def spectral_mean(self) -> np.ndarray:
        """Per-band mean of the training scenes (B,): what invalid pixels inside a patch read as."""
        return np.asarray(self.payload["spectral"]["mean"].numpy())

    @property
    def spectral_std(self) -> np.ndarray:
        """Per-band std of the training scenes (B,), 1 where a band had none."""
        return np.asarray(self.payload["spectral"]["std"].numpy())

    @property
    def spectral_range(self) -> SpectralRange | None:
        """Where the training spectra lie in the projected space (None: trained before it was kept)."""
        return SpectralRange.from_record(self.payload["spectral"])

    def build_model(self) -> SSCC:
        """The trained network (CPU, eval mode).

        Raises:
            CheckpointError: the weights do not fit the recorded architecture (an edited file).
        """
        try:
            model = SSCC.from_config(self.payload["model_config"])
            model.load_state_dict(self.payload["state_dict"])
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            reason = first_line(exc).rstrip(":")
            raise CheckpointError(_inconsistent(self.path, f"its weights do not fit its model_config: {reason}")) from exc
        return model.eval()

    def sha256(self) -> str:
        """Hash of the checkpoint file (first 16 hex digits), to record which model made an output."""
        return sha256_of(self.path)[:16]


def make_payload(model: SSCC, *, train_config: dict[str, Any], spectral: dict[str, Any], scenes: list[dict[str, Any]],
                 wavelength: list[float] | None, complete: bool, training: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint mapping: weights, configs, spectral projection, scene identity, training state."""
    if model.config is None:
        raise ValueError("the model has no config to save (build it with SSCC.build or SSCC.from_config)")
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "library_version": __version__,
        "complete": complete,
        "model_config": model.config, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "backbone": model.config["backbone"], "patch_size": int(train_config["patch_size"]),
        "halo": model.halo, "train_config": train_config, "spectral": spectral,
        "bands": model.in_bands, "wavelength": wavelength, "scenes": scenes, "training": training or {},
    }


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    try:
        handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    except OSError as exc:
        raise HsiClusterError(f"{path}: cannot write the checkpoint ({exc.strerror}); choose another output path") from exc
    try:
        with handle:
            serialised = io.BytesIO()  # torch's writer turns a full disk into "unexpected pos": write the bytes here
            torch.save(payload, serialised)
            try:
                handle.write(serialised.getbuffer())
                handle.flush()
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)  # NamedTemporaryFile creates 0600
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path


def _damaged_entry(path: Path) -> str | None:
    """The first part of a checkpoint's zip container whose bytes fail their recorded CRC, or None (all sound, or
    not a zip file: ``torch.load`` says what it is). torch reads the weights without checking the CRCs, so flipped
    bytes in a stored tensor loaded as other weights, and labels came out wrong in silence."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint safely (``weights_only=True``) and check its format and that its parts agree.

    Raises:
        CheckpointError: missing file, not a checkpoint, unsafe content, other version, or parts that
            disagree with the size of its spectral projection (an edited band count, wavelength list,
            band statistics, …).
    """
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; train one with 'hsicluster train SCENE -k K -o {path.name}'")
    kind = _other_file_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path}: not a checkpoint ({kind}); pass the .ckpt file written by 'hsicluster train'")
    damaged = _damaged_entry(path)
    if damaged is not None:
        raise CheckpointError(f"{path}: not a readable checkpoint (its part {damaged} fails its checksum: the file is "
                              "corrupt); retrain or restore it")
    try:
        with warnings.catch_warnings():  # a plain pickle makes torch warn of its protocol before it is refused below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused to load: the file holds objects other than weights and plain "
                              "data (it may be unsafe or not an hsicluster checkpoint)") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = first_line(exc)  # EOFError of an empty file: no text, its type then
        reason = reason.split(". This is an internal miniz error")[0]  # torch's advice follows: ours is below
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason}); "
                              "it may be truncated — retrain or restore it") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an hsicluster checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not supported "
                              f"(expects {CHECKPOINT_VERSION}); retrain with this version")
    missing = [key for key in REQUIRED_KEYS if not isinstance(payload.get(key), dict)]
    missing += [f"spectral {key}" for key in ("mean", "std") if "spectral" not in missing
                and not isinstance(payload["spectral"].get(key), torch.Tensor)]
    if missing:
        raise CheckpointError(f"{path}: not a complete hsicluster checkpoint (no {', '.join(missing)}); it was edited "
                              "or written by another program — retrain or restore it")
    problem = _band_mismatch(payload)
    if problem is not None:
        raise CheckpointError(_inconsistent(path, problem))
    return Checkpoint(payload, path)


#: Parts every checkpoint holds (mappings); a file without one of them cannot be used.
REQUIRED_KEYS = ("model_config", "state_dict", "spectral", "train_config")


def _inconsistent(path: Path, problem: str) -> str:
    return (f"{path}: not a consistent hsicluster checkpoint ({problem}); it was edited or written by another "
            "program — retrain or restore it")


def _band_mismatch(payload: dict[str, Any]) -> str | None:
    """What in a checkpoint disagrees with the size of its spectral projection (B bands in, C components out):
    the recorded band count, wavelengths, band statistics, PCA components, band screen or scene shapes; None
    when all agree."""
    weight = payload["state_dict"].get("projection.weight")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        return "no spectral projection weights (projection.weight)"
    n_components, n_bands = (int(n) for n in weight.shape[:2])
    config = payload["model_config"]
    for key, expected in (("in_bands", n_bands), ("n_components", n_components)):
        if not _is_count(config.get(key), expected):
            return f"model_config {key} is {config.get(key)!r} but the spectral projection has {expected}"
    if "bands" in payload and not _is_count(payload["bands"], n_bands):
        return f"it records {payload['bands']!r} bands but its spectral projection reads {n_bands}"
    wavelength = payload.get("wavelength")
    if wavelength is not None:
        values = _numbers(wavelength)
        if values is None:
            return "wavelengths that are not a list of numbers"
        if values.shape != (n_bands,):
            return f"{values.size} wavelengths for the {n_bands} bands of its spectral projection"
    problem = _spectral_mismatch(payload["spectral"], n_bands, n_components)
    if problem is not None:
        return problem
    for scene in payload.get("scenes") or []:
        shape = scene.get("shape") if isinstance(scene, dict) else None
        if isinstance(shape, list) and shape and not _is_count(shape[0], n_bands):
            return f"a training scene of {shape[0]!r} bands, but its spectral projection reads {n_bands}"
    return None


def _spectral_mismatch(spectral: dict[str, Any], n_bands: int, n_components: int) -> str | None:
    """What in the recorded spectral fit (band statistics, PCA components, band screen) disagrees with a
    projection of ``n_bands`` bands and ``n_components`` components, or None."""
    for key, shape in (("mean", (n_bands,)), ("std", (n_bands,)), ("components", (n_components, n_bands))):
        value = spectral.get(key)
        if value is None and key == "components":
            continue
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            return f"spectral {key} of shape {found}, but its spectral projection needs {shape}"
        if not bool(torch.isfinite(value).all()):
            return f"spectral {key} holds values that are not finite"
    prototypes, radius = spectral.get("range_prototypes"), spectral.get("range_radius")
    if prototypes is not None or radius is not None:
        if not isinstance(prototypes, torch.Tensor) or prototypes.ndim != 2 or prototypes.shape[1] != n_components \
                or not isinstance(radius, torch.Tensor) or radius.numel() != 1 or not float(radius) > 0 \
                or not bool(torch.isfinite(prototypes).all()):
            return f"a spectral range that does not fit its {n_components} components"
    screen = spectral.get("band_screen")
    if screen is not None:
        lists = [screen.get(key) for key in ("flagged", "constant", "noisy") if screen.get(key) is not None] \
            if isinstance(screen, dict) else [None]
        if not all(isinstance(v, list) and all(_is_index(i, n_bands) for i in v) for v in lists):
            return f"a band screen whose bands are not indices of its {n_bands} bands"
    return None


def _is_int(value: Any) -> bool:
    """A plain integer (JSON/YAML booleans are ints to Python, not counts)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: Any, expected: int) -> bool:
    return _is_int(value) and value == expected


def _is_index(value: Any, n_bands: int) -> bool:
    return _is_int(value) and 0 <= value < n_bands


def _numbers(values: Any) -> np.ndarray | None:
    """``values`` as float64 when it is a list or tuple of plain numbers, else None."""
    if not isinstance(values, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    return np.asarray(values, dtype=np.float64)


#: Leading bytes of files that are often passed by mistake where a checkpoint goes.
_OTHER_FILES = ((b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"II+\x00", "a BigTIFF image"),
                (b"MM\x00+", "a BigTIFF image"), (b"\x89PNG", "a PNG image"), (b"ENVI", "an ENVI header"),
                (b"\x89HDF", "an HDF5 file"), (b"MATLAB", "a MATLAB file"), (b"\x93NUMPY", "a NumPy array"))


def _other_file_kind(path: Path) -> str | None:
    """What a file is when it is recognisably not a torch file (an image, a scene, text), else None.

    torch files are zip archives (``PK``) or, in the legacy format, pickles (``\\x80``); anything else,
    e.g. a label GeoTIFF passed as ``-m``, is called what it is instead of "maybe unsafe".
    """
    try:
        with open(path, "rb") as file:
            head = file.read(8)
    except OSError:
        return None  # torch.load reports it
    if not head or head.startswith((b"PK", b"\x80")):
        return None
    for magic, kind in _OTHER_FILES:
        if head.startswith(magic):
            return kind
    return "an unknown file type"
