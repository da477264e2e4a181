"""Checkpoints: a safe round trip, refusal of crafted or broken files, atomic writes."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import hsi_cluster
from hsi_cluster.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, make_payload, save_checkpoint
from hsi_cluster.errors import HsiClusterError
from hsi_cluster.io.info import is_checkpoint_file
from hsi_cluster.model.sscc import SSCC
from tests import helpers
from tests.train_helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(seed: int = 0, *, n_bands: int = 12, n_clusters: int = 3) -> SSCC:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    components = np.linalg.qr(rng.normal(size=(n_bands, 4)))[0].T
    model = SSCC.build(rng.normal(500, 50, n_bands), rng.uniform(50, 100, n_bands), components,
                       n_clusters=n_clusters, backbone="dense", backbone_kwargs={"width": 8, "depth": 2},
                       head_hidden=16)
    # non-trivial BatchNorm running statistics, so that they must round-trip too
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(rng.normal(500, 80, (64, n_bands, 5, 5)).astype(np.float32)))
    return model.eval()


def payload_of(model: SSCC, *, complete: bool = True) -> dict:
    spectral = {"mean": torch.zeros(model.in_bands, dtype=torch.float64), "std": torch.ones(model.in_bands),
                "components": torch.eye(4, model.in_bands)}
    wavelengths = helpers.spectral_axis(model.in_bands)[0].tolist()
    return make_payload(model, train_config=tiny_config().to_dict(), spectral=spectral,
                        scenes=[{"store": "/x.zarr", "source": "/x.tif", "size": 1, "shape": [12, 4, 4]}],
                        wavelength=wavelengths, complete=complete, training={"step": 3, "seed": 0})


@pytest.fixture
def saved(tmp_path: Path) -> tuple[SSCC, Path]:
    model = tiny_model()
    return model, save_checkpoint(payload_of(model), tmp_path / "model.ckpt")


def test_round_trip_rebuilds_an_identical_model(saved: tuple[SSCC, Path]) -> None:
    model, path = saved
    checkpoint = load_checkpoint(path)
    rebuilt = checkpoint.build_model()
    assert not rebuilt.training
    original = model.state_dict()
    assert set(rebuilt.state_dict()) == set(original)
    for name, tensor in rebuilt.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    x = torch.from_numpy(np.random.default_rng(1).normal(500, 80, (10, 12, 5, 5)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    labels, confidence = rebuilt.predict_patches(x)
    expected = model.predict_patches(x)
    assert torch.equal(labels, expected[0]) and torch.equal(confidence, expected[1])
    assert checkpoint.complete and checkpoint.n_clusters == 3 and checkpoint.in_bands == 12
    assert checkpoint.patch_size == 5
    assert checkpoint.wavelength == pytest.approx(helpers.spectral_axis(12)[0].tolist())
    assert checkpoint.payload["library_version"] == hsi_cluster.__version__
    assert checkpoint.payload["format"] == CHECKPOINT_FORMAT
    assert checkpoint.path == path.absolute()
    assert len(checkpoint.sha256()) == 16 and checkpoint.sha256() == load_checkpoint(path).sha256()


def test_loads_with_plain_torch_load_weights_only(saved: tuple[SSCC, Path]) -> None:
    _, path = saved
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == CHECKPOINT_FORMAT
    assert payload["model_config"]["n_clusters"] == 3
    assert payload["train_config"]["patch_size"] == 5


def test_incomplete_flag(tmp_path: Path) -> None:
    path = save_checkpoint(payload_of(tiny_model(), complete=False), tmp_path / "m.ckpt")
    assert not load_checkpoint(path).complete


@pytest.mark.parametrize("key", ["spectral", "model_config", "state_dict", "train_config"])
def test_a_checkpoint_without_a_required_part_is_refused(tmp_path: Path, key: str) -> None:
    payload = payload_of(tiny_model())
    del payload[key]
    path = tmp_path / "edited.ckpt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"not a complete hsicluster checkpoint \\(no {key}\\)"):
        load_checkpoint(path)


#: Training ranges (model/spectral_range.py) that do not fit a 4-component projection.
RANGE_EDITS = {"range-width": {"range_prototypes": torch.zeros(32, 5), "range_radius": torch.tensor(1.0)},
               "range-radius": {"range_prototypes": torch.zeros(32, 4), "range_radius": torch.tensor(-1.0)},
               "range-half": {"range_prototypes": torch.zeros(32, 4)}}


def _edit(payload: dict, edit: str) -> None:
    """Edit a 12-band, 4-component checkpoint payload so that one part disagrees with its projection's size."""
    if edit == "wavelength-one-short":
        payload["wavelength"] = payload["wavelength"][:-1]
    elif edit == "wavelength-one-more":
        payload["wavelength"] = [*payload["wavelength"], 2600.0]
    elif edit == "wavelength-text":
        payload["wavelength"] = "400-2500"
    elif edit == "bands":
        payload["bands"] = 11
    elif edit == "in-bands":
        payload["model_config"]["in_bands"] = 13
    elif edit == "n-components":
        payload["model_config"]["n_components"] = 5
    elif edit == "projection":
        payload["state_dict"]["projection.weight"] = torch.zeros(4, 11, 1, 1)
    elif edit == "spectral-mean":
        payload["spectral"]["mean"] = payload["spectral"]["mean"][:-1]
    elif edit == "spectral-std-nan":
        payload["spectral"]["std"] = torch.full((12,), float("nan"))
    elif edit == "components":
        payload["spectral"]["components"] = torch.eye(4, 11)
    elif edit == "band-screen":
        payload["spectral"]["band_screen"] = {"flagged": [3, 12], "constant": [], "noisy": []}
    elif edit == "scene-shape":
        payload["scenes"][0]["shape"] = [11, 4, 4]
    elif edit in RANGE_EDITS:
        payload["spectral"] |= RANGE_EDITS[edit]
    else:
        raise ValueError(edit)


EDITS = ["wavelength-one-short", "wavelength-one-more", "wavelength-text", "bands", "in-bands", "n-components",
         "projection", "spectral-mean", "spectral-std-nan", "components", "band-screen", "scene-shape", "range-width",
         "range-radius", "range-half"]


@pytest.mark.parametrize("edit", EDITS)
def test_a_checkpoint_whose_bands_disagree_with_its_projection_is_refused(tmp_path: Path, edit: str) -> None:
    payload = payload_of(tiny_model())
    _edit(payload, edit)
    path = save_checkpoint(payload, tmp_path / "edited.ckpt")
    with pytest.raises(CheckpointError, match="edited.ckpt: not a consistent hsicluster checkpoint \\(.+\\); it was "
                                              "edited or written by another program") as exc:
        load_checkpoint(path)
    assert "\n" not in str(exc.value)


def test_consistency_messages_name_the_part_and_the_sizes(tmp_path: Path) -> None:
    expected = {"wavelength-one-short": "11 wavelengths for the 12 bands", "bands": "records 11 bands",
                "in-bands": "in_bands is 13 but the spectral projection has 12",
                "spectral-mean": "spectral mean of shape (11,)", "band-screen": "indices of its 12 bands",
                "range-width": "a spectral range that does not fit its 4 components"}
    for edit, text in expected.items():
        payload = payload_of(tiny_model())
        _edit(payload, edit)
        with pytest.raises(CheckpointError, match=re.escape(text)):
            load_checkpoint(save_checkpoint(payload, tmp_path / f"{edit}.ckpt"))


def test_a_checkpoint_without_band_statistics_is_refused(tmp_path: Path) -> None:
    payload = payload_of(tiny_model())
    del payload["spectral"]["std"]
    with pytest.raises(CheckpointError, match="not a complete hsicluster checkpoint \\(no spectral std\\)"):
        load_checkpoint(save_checkpoint(payload, tmp_path / "edited.ckpt"))


def test_weights_that_do_not_fit_the_recorded_architecture_are_refused(tmp_path: Path) -> None:
    payload = payload_of(tiny_model())
    payload["state_dict"]["backbone.layers.0.weight"] = torch.zeros(9, 4, 1, 1)  # the bands agree, a layer does not
    checkpoint = load_checkpoint(save_checkpoint(payload, tmp_path / "edited.ckpt"))
    with pytest.raises(CheckpointError, match="not a consistent hsicluster checkpoint \\(its weights do not fit its "
                                              "model_config: .+\\); it was edited") as exc:
        checkpoint.build_model()
    assert "\n" not in str(exc.value)


def test_a_checkpoint_without_optional_records_still_loads(tmp_path: Path) -> None:
    payload = payload_of(tiny_model())
    payload["wavelength"] = None  # a scene without wavelengths
    del payload["spectral"]["components"], payload["bands"]
    payload["scenes"] = []
    payload["spectral"]["band_screen"] = {"flagged": [0, 11], "constant": [], "noisy": [5], "min_shared_variance": 0.05}
    assert load_checkpoint(save_checkpoint(payload, tmp_path / "m.ckpt")).in_bands == 12


class Exploit:
    """Pickles to a call of ``os.system`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("error:Detected pickle protocol")  # torch's warning must not reach the user
@pytest.mark.parametrize("writer", ["torch", "torch-inside-a-real-payload", "pickle"])
def test_crafted_checkpoint_cannot_execute_code(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    if writer == "torch":
        torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "payload": Exploit(marker)}, path)
    elif writer == "torch-inside-a-real-payload":
        payload = payload_of(tiny_model())
        payload["train_config"]["augment"] = Exploit(marker)
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump({"format": CHECKPOINT_FORMAT, "payload": Exploit(marker)}, handle)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert not marker.exists(), "loading the checkpoint executed code"
    assert "\n" not in str(exc.value) and "evil.ckpt" in str(exc.value)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.02])
def test_truncated_checkpoint(saved: tuple[SSCC, Path], fraction: float) -> None:
    _, path = saved
    helpers.truncate_file(path, fraction)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "\n" not in str(exc.value) and "internal miniz error" not in str(exc.value)  # torch's advice: not ours
    assert is_checkpoint_file(path)  # `info` loads it (and says it is truncated), not "not a raster GDAL can read"


def test_flipped_bytes_in_the_weights_are_refused(saved: tuple[SSCC, Path]) -> None:
    """64 bytes XOR-ed inside a stored tensor loaded as other weights (labels agreed with the sound model on 23 % of
    the pixels, exit 0): the zip container's CRC of that part says it is damaged."""
    import zipfile

    _, path = saved
    with zipfile.ZipFile(path) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)  # the largest tensor's bytes
    data = bytearray(path.read_bytes())
    with open(path, "rb") as handle:  # its data follow the local header, whose extra field has its own length
        handle.seek(entry.header_offset + 28)
        start = entry.header_offset + 30 + len(entry.filename.encode()) + int.from_bytes(handle.read(2), "little")
    data[start + 8:start + 72] = bytes(b ^ 0xFF for b in data[start + 8:start + 72])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"fails its checksum: the file is corrupt\); retrain or restore it"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", ["state_dict", "tensor", "list", "text", "empty", "random", "npz",
                                     "other-version"])
def test_not_a_checkpoint(tmp_path: Path, content: str) -> None:
    path = tmp_path / "other.pt"
    if content == "state_dict":
        torch.save(tiny_model().state_dict(), path)
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "list":
        torch.save([1, 2, 3], path)
    elif content == "text":
        path.write_text("format: hsicluster-checkpoint\n")
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif content == "npz":
        with open(path, "wb") as handle:
            np.savez(handle, a=np.zeros(3))
    else:
        payload = payload_of(tiny_model())
        payload["version"] = 99
        torch.save(payload, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "\n" not in str(exc.value) and "other.pt" in str(exc.value)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)  # a folder


def test_checkpoint_error_is_a_user_error() -> None:
    assert issubclass(CheckpointError, HsiClusterError)


def test_atomic_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    model = tiny_model()
    path = tmp_path / "model.ckpt"
    save_checkpoint(payload_of(model), path)
    save_checkpoint(payload_of(model, complete=False), path)  # replaces in place
    assert helpers.listing(tmp_path) == ["model.ckpt"]
    assert not load_checkpoint(path).complete
    mode = path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not the 0600 of a temporary file


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    path = tmp_path / "model.ckpt"
    save_checkpoint(payload_of(model), path)
    before = path.read_bytes()

    def crash(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(payload_of(model, complete=False), path)
    assert helpers.listing(tmp_path) == ["model.ckpt"]
    assert path.read_bytes() == before
    monkeypatch.undo()
    assert load_checkpoint(path).complete


def test_save_into_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(HsiClusterError, match="cannot write") as exc:
        save_checkpoint(payload_of(tiny_model()), tmp_path / "missing" / "model.ckpt")
    assert "\n" not in str(exc.value)
    assert helpers.listing(tmp_path) == []


def test_a_geotiff_is_not_a_checkpoint(tmp_path: Path) -> None:
    """A label raster passed as -m by mistake is called what it is, not "maybe unsafe"."""
    path = tmp_path / "labels.tif"
    helpers.write_geotiff(path, np.zeros((1, 8, 8), np.uint8), nodata=255)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    message = str(exc.value)
    assert "not a checkpoint (a TIFF image)" in message and "unsafe" not in message
    assert "hsicluster train" in message and "\n" not in message


def test_geometry_accessors_follow_the_dense_depth(saved: tuple[SSCC, Path]) -> None:
    model, path = saved
    checkpoint = load_checkpoint(path)
    assert model.backbone.depth == 2
    assert (checkpoint.patch_size, checkpoint.halo, checkpoint.receptive_field) == (5, 2, 5)
    assert checkpoint.halo == model.halo == checkpoint.payload["halo"]
    assert checkpoint.backbone == "dense" and checkpoint.amp == bool(tiny_config().amp)
    np.testing.assert_array_equal(checkpoint.spectral_mean, np.zeros(model.in_bands))


def test_resnet_geometry_is_the_trained_patch_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    model = SSCC.build(rng.normal(500, 50, 12), np.ones(12), np.eye(4, 12), n_clusters=3, backbone="resnet",
                       backbone_kwargs={"stem_width": 4, "widths": [4]}, head_hidden=8)
    payload = make_payload(model, train_config={**tiny_config().to_dict(), "patch_size": 7},
                           spectral={"mean": torch.zeros(12), "std": torch.ones(12)}, scenes=[], wavelength=None,
                           complete=True)
    checkpoint = load_checkpoint(save_checkpoint(payload, tmp_path / "resnet.ckpt"))
    assert (checkpoint.patch_size, checkpoint.halo, checkpoint.receptive_field) == (7, 3, 7)
