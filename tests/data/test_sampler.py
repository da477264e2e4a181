"""The streaming patch sampler, against plain numpy.

Scenes are tiny GeoTIFFs ingested with 16-pixel chunks (several blocks, short last blocks), so
every property — each valid centre once per epoch, patches equal to a cut of ``np.pad(…, "reflect")``
of the whole scene, determinism, resuming mid-epoch, sharding across workers, bounded memory —
is checked on real store reads.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from hsi_cluster.data.sampler import PatchBatch, PatchSampler, collate_patches
from hsi_cluster.geo import PatchGeometry
from hsi_cluster.io import ingest
from hsi_cluster.io.store import Store
from tests import helpers
from tests.train_helpers import (
    NODATA,
    IngestedScene,
    make_scene,
    reference_filled,
    reference_patch,
    reflect_padded,
    store_arrays,
)

PATCH = 5
HALO = PATCH // 2


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    """40 × 37 × 12 float32, every pixel valid (1480 pixels = 37 batches of 40)."""
    return make_scene(tmp_path_factory.mktemp("clean"), seed=3)


@pytest.fixture(scope="module")
def holed(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    """40 × 37 × 12 float32 with NaN and nodata pixels (some whole, some in one band only)."""
    scene = make_scene(tmp_path_factory.mktemp("holed"), seed=4, nan_pixels=40, nodata_pixels=30)
    assert 0 < (~scene.valid).sum() == 70
    return scene


def epoch_centres(sampler: PatchSampler) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(batch.rows.copy(), batch.cols.copy()) for batch in sampler]


def flat(batches: list[tuple[np.ndarray, np.ndarray]], width: int) -> np.ndarray:
    if not batches:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([rows * width + cols for rows, cols in batches])


# ------------------------------------------------------------------------------------------ plan


@pytest.mark.parametrize("batch_size", [32, 40, 1000])
def test_every_valid_centre_once_per_epoch_except_dropped_partial_batch(holed: IngestedScene,
                                                                         batch_size: int) -> None:
    sampler = PatchSampler(holed.store, patch_size=PATCH, batch_size=batch_size, seed=1)
    batches = list(sampler)
    n_valid = int(holed.valid.sum())
    assert all(len(b.rows) == batch_size and b.patches.shape == (batch_size, 12, PATCH, PATCH) for b in batches)
    centres = flat([(b.rows, b.cols) for b in batches], holed.valid.shape[1])
    assert len(centres) == n_valid // batch_size * batch_size
    assert len(np.unique(centres)) == len(centres), "a centre was drawn twice in one epoch"
    rows, cols = np.divmod(centres, holed.valid.shape[1])
    assert holed.valid[rows, cols].all(), "an invalid (NaN/nodata) pixel was used as a centre"
    assert sampler.valid_centres() == n_valid
    assert sampler.batches_per_epoch() == len(batches) == n_valid // batch_size



@pytest.mark.parametrize("batch_size", [32, 1000])
def test_keep_partial_yields_every_valid_centre_once(holed: IngestedScene, batch_size: int) -> None:
    sampler = PatchSampler(holed.store, patch_size=PATCH, batch_size=batch_size, seed=1, keep_partial=True)
    batches = list(sampler)
    n_valid = int(holed.valid.sum())
    centres = flat([(b.rows, b.cols) for b in batches], holed.valid.shape[1])
    assert np.array_equal(np.sort(centres), np.flatnonzero(holed.valid))
    assert [len(b.rows) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    assert sampler.batches_per_epoch() == len(batches) == -(-n_valid // batch_size)

def test_all_centres_when_batch_divides_the_valid_count(clean: IngestedScene) -> None:
    width = clean.valid.shape[1]
    centres = flat(epoch_centres(PatchSampler(clean.store, patch_size=PATCH, batch_size=40, seed=0)), width)
    assert sorted(centres.tolist()) == list(range(clean.valid.size))


def test_mask_restricts_centres(holed: IngestedScene) -> None:
    rng = np.random.default_rng(0)
    mask = rng.random(holed.valid.shape) < 0.3
    mask[:, :5] = True  # a dense strip, so whole blocks are in and others partly
    usable = mask & holed.valid
    sampler = PatchSampler(holed.store, patch_size=PATCH, batch_size=16, seed=2, mask=mask)
    centres = flat(epoch_centres(sampler), mask.shape[1])
    rows, cols = np.divmod(centres, mask.shape[1])
    assert usable[rows, cols].all()
    assert len(np.unique(centres)) == len(centres) == usable.sum() // 16 * 16
    assert sampler.valid_centres() == usable.sum()


def test_mask_of_wrong_shape_is_refused(holed: IngestedScene) -> None:
    with pytest.raises(ValueError, match="mask"):
        PatchSampler(holed.store, patch_size=PATCH, batch_size=16, mask=np.ones((3, 3), bool))


@pytest.mark.parametrize("kwargs", [{"patch_size": 4, "batch_size": 8}, {"patch_size": 0, "batch_size": 8},
                                    {"patch_size": 5, "batch_size": 0}])
def test_bad_patch_or_batch_size_is_refused(holed: IngestedScene, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PatchSampler(holed.store, **kwargs)


# ---------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("patch_size", [5, 7])
def test_patches_equal_reflect_padded_scene_everywhere(clean: IngestedScene, patch_size: int) -> None:
    """Every pixel of the scene is a centre once (batch 40 divides 1480): borders and corners included."""
    halo = patch_size // 2
    padded = reflect_padded(clean.cube, halo)
    seen = np.zeros(clean.valid.shape, dtype=int)
    for batch in PatchSampler(clean.store, patch_size=patch_size, batch_size=40, seed=5):
        assert batch.patches.dtype == clean.cube.dtype
        for patch, row, col in zip(batch.patches, batch.rows, batch.cols, strict=True):
            np.testing.assert_array_equal(patch, reference_patch(padded, row, col, patch_size),
                                          err_msg=f"patch centred on ({row}, {col})")
            seen[row, col] += 1
    assert (seen == 1).all()  # so all four borders and corners were compared


def test_invalid_neighbours_are_filled_not_nan(holed: IngestedScene) -> None:
    """A valid centre next to a NaN/nodata pixel must not hand the network NaN or −9999.

    Invalid positions inside a patch hold the scene's band means (neutral after standardisation);
    the rest is the reflect-padded scene, exactly.
    """
    padded = reflect_padded(reference_filled(holed.cube, holed.valid), HALO)
    touched = 0
    for batch in PatchSampler(holed.store, patch_size=PATCH, batch_size=32, seed=0):
        assert np.isfinite(batch.patches).all(), "NaN from an invalid neighbour reached a patch"
        assert not (batch.patches == NODATA).any(), "the nodata value reached a patch"
        for patch, row, col in zip(batch.patches, batch.rows, batch.cols, strict=True):
            np.testing.assert_allclose(patch, reference_patch(padded, row, col, PATCH), rtol=1e-6)
            r0, c0 = max(row - HALO, 0), max(col - HALO, 0)
            touched += not holed.valid[r0:row + HALO + 1, c0:col + HALO + 1].all()
    assert touched > 20  # the scene really has valid centres with invalid neighbours


def test_patches_equal_numpy_cut_on_a_holed_scene_at_corners(holed: IngestedScene) -> None:
    """Batch-to-batch the centres move, but each patch is where its centre says."""
    data, valid = store_arrays(holed.store)
    np.testing.assert_array_equal(valid, holed.valid)
    padded = reflect_padded(reference_filled(holed.cube, holed.valid), HALO)
    corners = {(0, 0), (0, 36), (39, 0), (39, 36)}
    found = set()
    for batch in PatchSampler(holed.store, patch_size=PATCH, batch_size=8, seed=9):
        for patch, row, col in zip(batch.patches, batch.rows, batch.cols, strict=True):
            if (row, col) in corners:
                found.add((row, col))
                np.testing.assert_allclose(patch, reference_patch(padded, row, col, PATCH), rtol=1e-6)
    assert found == {c for c in corners if holed.valid[c]}


@pytest.mark.parametrize("epoch", [0, 1])
def test_a_share_of_each_block_reads_blocks_alone_and_cuts_exact_patches(holed: IngestedScene,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         epoch: int) -> None:
    """Below one pass a block is read without its neighbours, for the centres whose patches it holds;
    each block still gives ceil(fraction · its usable centres) of them, and the patches are the scene's."""
    calls: list[bool] = []
    original = Store.read_window
    monkeypatch.setattr(Store, "read_window",
                        lambda self, *a, **k: (calls.append(k.get("neighbours", True)), original(self, *a, **k))[1])
    padded = reflect_padded(reference_filled(holed.cube, holed.valid), HALO)
    sampler = PatchSampler(holed.store, patch_size=PATCH, batch_size=1, seed=2, epoch=epoch, fraction=0.3)
    assert not sampler.reads_neighbours
    drawn: dict[int, int] = {}
    for batch in sampler:
        for patch, row, col in zip(batch.patches, batch.rows, batch.cols, strict=True):
            np.testing.assert_allclose(patch, reference_patch(padded, row, col, PATCH), rtol=1e-6)
            i, j = row // 16, col // 16
            window = sampler.grid.window(i, j)
            rows_ok, cols_ok = PatchGeometry(PATCH).contained(window, height=40, width=37)
            assert rows_ok[row - window.row] and cols_ok[col - window.col], f"({row}, {col}) crosses its block"
            drawn[i * sampler.grid.shape[1] + j] = drawn.get(i * sampler.grid.shape[1] + j, 0) + 1
    assert calls and not any(calls)  # every block read alone
    for block, (i, j) in enumerate(sampler.grid):
        rows, cols = sampler.grid.window(i, j).slices
        usable = int(holed.valid[rows, cols].sum())
        assert drawn.get(block, 0) == min(int(np.ceil(0.3 * usable)), len(sampler._contained(block, sampler._centres(block))))
    assert sum(drawn.values()) == sampler.centres_per_epoch()
    calls.clear()
    sampler.fraction = 1.0  # a full pass reads the halo from the neighbours again
    next(iter(sampler))
    assert calls and all(calls)


@pytest.mark.parametrize("fraction", [1.0, 0.4])
def test_a_transform_maps_each_block_and_patches_are_cut_from_it(holed: IngestedScene, fraction: float) -> None:
    """A per-pixel map applied to each block read gives the mapped reference patches (C channels)."""
    weight = np.random.default_rng(1).normal(size=(3, holed.cube.shape[0])).astype(np.float32)

    def transform(pixels: np.ndarray) -> np.ndarray:  # (n, B) → (n, C)
        return pixels.astype(np.float32) @ weight.T + 1.0

    padded = reflect_padded(reference_filled(holed.cube, holed.valid), HALO)
    sampler = PatchSampler(holed.store, patch_size=PATCH, batch_size=16, seed=3, fraction=fraction,
                           transform=transform)
    plain = PatchSampler(holed.store, patch_size=PATCH, batch_size=16, seed=3, fraction=fraction)
    count = 0
    for batch, raw in zip(sampler, plain, strict=True):
        assert batch.patches.shape == (16, 3, PATCH, PATCH) and batch.patches.dtype == np.float32
        np.testing.assert_array_equal(batch.rows, raw.rows)  # the same centres, in the same order
        for patch, row, col in zip(batch.patches, batch.rows, batch.cols, strict=True):
            raw_patch = reference_patch(padded, row, col, PATCH)  # (B, p, p)
            expected = transform(raw_patch.reshape(len(raw_patch), -1).T).T.reshape(3, PATCH, PATCH)
            np.testing.assert_allclose(patch, expected, rtol=1e-5, atol=1e-3)
            count += 1
    assert count > 100


# -------------------------------------------------------------------------------- determinism


def test_deterministic_for_seed_and_epoch(holed: IngestedScene) -> None:
    def run(seed: int, epoch: int) -> list[PatchBatch]:
        sampler = PatchSampler(holed.store, patch_size=PATCH, batch_size=32, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    first, again = run(7, 2), run(7, 2)
    assert len(first) == len(again)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.cols, b.cols)
        np.testing.assert_array_equal(a.patches, b.patches)
    width = holed.valid.shape[1]
    order = flat([(b.rows, b.cols) for b in first], width)
    for seed, epoch in ((7, 3), (8, 2)):
        other = flat([(b.rows, b.cols) for b in run(seed, epoch)], width)
        assert len(other) == len(order) and not np.array_equal(other, order), (seed, epoch)


def test_batches_mix_blocks(clean: IngestedScene) -> None:
    """The shuffle buffer mixes regions: a batch is not one block's pixels in raster order."""
    batches = epoch_centres(PatchSampler(clean.store, patch_size=PATCH, batch_size=40, seed=0))
    blocks_per_batch = [len(set(zip((rows // 16).tolist(), (cols // 16).tolist(), strict=True))) for rows, cols in batches]
    assert np.mean(blocks_per_batch) > 3


@pytest.mark.parametrize("start_batch", [0, 1, 17, 44, 45])
def test_set_epoch_start_batch_resumes_the_same_epoch(holed: IngestedScene, start_batch: int) -> None:
    sampler = PatchSampler(holed.store, patch_size=PATCH, batch_size=32, seed=3)
    sampler.set_epoch(4)
    full = list(sampler)
    assert len(full) == 44  # 1410 valid pixels // 32
    sampler.set_epoch(4, start_batch=start_batch)
    rest = list(sampler)
    assert len(rest) == max(0, len(full) - start_batch)
    for a, b in zip(full[start_batch:], rest, strict=True):
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.cols, b.cols)
        np.testing.assert_array_equal(a.patches, b.patches)
    sampler.set_epoch(4)  # and back to the whole epoch
    assert len(list(sampler)) == len(full)


# ---------------------------------------------------------------------------------- workers


def loader_centres(sampler: PatchSampler, workers: int, width: int) -> np.ndarray:
    loader = torch.utils.data.DataLoader(sampler, batch_size=None, num_workers=workers)
    return flat([(np.asarray(b.rows), np.asarray(b.cols)) for b in loader], width)


@pytest.fixture(scope="module")
def square(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    """32 × 32, all valid: four full 16 × 16 blocks of 256 pixels, a multiple of the batch of 64."""
    return make_scene(tmp_path_factory.mktemp("square"), height=32, width=32, seed=6)


def test_workers_shard_without_duplicates_and_cover_what_one_worker_does(square: IngestedScene) -> None:
    sampler = PatchSampler(square.store, patch_size=PATCH, batch_size=64, seed=1, buffer_bytes=1)
    assert sampler.blocks_per_group == 1  # each worker's groups are whole blocks: nothing dropped
    one = loader_centres(sampler, 0, 32)
    two = loader_centres(sampler, 2, 32)
    assert len(np.unique(two)) == len(two), "two workers produced the same centre"
    assert sorted(two.tolist()) == sorted(one.tolist()) == list(range(32 * 32))


def test_workers_shard_a_ragged_scene_without_duplicates(holed: IngestedScene) -> None:
    sampler = PatchSampler(holed.store, patch_size=PATCH, batch_size=32, seed=1)
    two = loader_centres(sampler, 2, 37)
    assert len(np.unique(two)) == len(two)
    rows, cols = np.divmod(two, 37)
    assert holed.valid[rows, cols].all()
    # each worker drops at most one partial batch
    n_valid = int(holed.valid.sum())
    assert n_valid - 2 * 31 <= len(two) <= n_valid
    assert len(two) == sampler.batches_per_epoch(shards=2) * 32


def test_collate_patches_gives_tensors(holed: IngestedScene) -> None:
    batch = next(iter(PatchSampler(holed.store, patch_size=PATCH, batch_size=8)))
    tensors = collate_patches(batch)
    assert tensors["patches"].shape == (8, 12, PATCH, PATCH)
    assert torch.equal(tensors["rows"], torch.from_numpy(batch.rows))


def test_pin_memory_gives_the_patches_as_a_page_locked_tensor(holed: IngestedScene,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """DataLoader(pin_memory=True) calls PatchBatch.pin_memory: the patches become a pinned tensor with
    the same values, the centres stay, and training reads either form through patch_tensor."""
    batch = next(iter(PatchSampler(holed.store, patch_size=PATCH, batch_size=8)))
    pinned: list[torch.Tensor] = []

    def pin(tensor: torch.Tensor) -> torch.Tensor:  # no CUDA here: record the call, return a copy
        pinned.append(tensor)
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    got = batch.pin_memory()
    assert len(pinned) == 1 and isinstance(got.patches, torch.Tensor)
    assert torch.equal(got.patch_tensor(), batch.patch_tensor())
    assert got.rows is batch.rows and got.cols is batch.cols
    assert torch.equal(collate_patches(got)["patches"], torch.from_numpy(batch.patches))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_pin_memory_pins_on_cuda(holed: IngestedScene) -> None:
    batch = next(iter(PatchSampler(holed.store, patch_size=PATCH, batch_size=8)))
    assert batch.pin_memory().patch_tensor().is_pinned()


# ----------------------------------------------------------------------------------- memory


def test_blocks_per_group_respects_buffer_bytes(holed: IngestedScene) -> None:
    block_bytes = 12 * (16 + 2 * HALO) ** 2 * 4  # bands × (chunk + 2·halo)² × float32
    for k in (1, 2, 5):
        sampler = PatchSampler(holed.store, patch_size=PATCH, batch_size=8, buffer_bytes=k * block_bytes + 7)
        assert sampler.blocks_per_group == k
        assert sampler.blocks_per_group * block_bytes <= k * block_bytes + 7
    tiny = PatchSampler(holed.store, patch_size=PATCH, batch_size=8, buffer_bytes=10)
    assert tiny.blocks_per_group == 1  # never zero


def test_blocks_per_group_counts_the_bytes_a_transformed_block_holds(holed: IngestedScene) -> None:
    """With a transform the cache holds its output (3 float64 channels here), not the 12 raw bands."""
    side = 16 + 2 * HALO
    weight = np.ones((3, 12))

    def transform(pixels: np.ndarray) -> np.ndarray:  # (n, 12) → (n, 3) float64: 24 bytes per pixel
        return pixels.astype(np.float64) @ weight.T

    buffer = 5 * 24 * side**2
    sampler = PatchSampler(holed.store, patch_size=PATCH, batch_size=8, buffer_bytes=buffer, transform=transform)
    assert sampler.blocks_per_group == 5
    assert PatchSampler(holed.store, patch_size=PATCH, batch_size=8, buffer_bytes=buffer).blocks_per_group == 2


def test_shuffle_groups_have_near_equal_sizes(wide: IngestedScene) -> None:
    """24 blocks with room for 10 per group: three groups of 8, not 10 + 10 + 4 (a last group of a few
    blocks would make its batches come from a small part of the scene); every block once."""
    sampler = PatchSampler(wide.store, patch_size=PATCH, batch_size=32, seed=0,
                           buffer_bytes=10 * 4 * (16 + 2 * HALO) ** 2 * 4)
    assert sampler.blocks_per_group == 10
    order = np.random.default_rng(0).permutation(len(sampler.grid))
    groups = sampler._groups(order)
    assert [len(group) for group in groups] == [8, 8, 8]
    np.testing.assert_array_equal(np.concatenate(groups), order)
    assert [len(g) for g in sampler._groups(order[:20])] == [10, 10]
    assert [len(g) for g in sampler._groups(order[:0])] == [0]


class ReadSpy:
    """Wraps ``Store.read_window``: counts reads and the blocks still alive (held by the sampler)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        self.alive: set[int] = set()
        self.peak = 0
        original = Store.read_window

        def spy(*args, **kwargs):
            window = original(*args, **kwargs)
            self.reads += 1
            key = self.reads
            self.alive.add(key)
            weakref.finalize(window, self.alive.discard, key)
            self.peak = max(self.peak, len(self.alive))
            return window

        monkeypatch.setattr(Store, "read_window", spy)


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    """64 × 96, 4 bands: 24 blocks, so a small buffer holds a small fraction of the scene."""
    return make_scene(tmp_path_factory.mktemp("wide"), bands=4, height=64, width=96, seed=8)


@pytest.mark.parametrize("k", [1, 2])
def test_memory_is_bounded_by_the_buffer_not_the_scene(wide: IngestedScene, monkeypatch: pytest.MonkeyPatch,
                                                       k: int) -> None:
    block_bytes = 4 * (16 + 2 * HALO) ** 2 * 4
    spy = ReadSpy(monkeypatch)
    sampler = PatchSampler(wide.store, patch_size=PATCH, batch_size=32, seed=0, buffer_bytes=k * block_bytes)
    assert sampler.blocks_per_group == k
    n = sum(len(batch.rows) for batch in sampler)
    gc.collect()
    assert n == 64 * 96
    assert spy.peak <= 3 * k + 2 < len(sampler.grid), f"{spy.peak} blocks held at once"
    assert spy.reads <= 2 * len(sampler.grid), f"{spy.reads} block reads for {len(sampler.grid)} blocks"
    assert not spy.alive  # nothing kept after the epoch


def test_each_block_read_once_with_a_large_buffer(wide: IngestedScene, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = ReadSpy(monkeypatch)
    sampler = PatchSampler(wide.store, patch_size=PATCH, batch_size=64, seed=0)
    assert sum(len(batch.rows) for batch in sampler) == 64 * 96
    assert spy.reads == len(sampler.grid)


def test_sampler_store_may_be_a_str(holed: IngestedScene) -> None:
    sampler = PatchSampler(str(holed.store), patch_size=PATCH, batch_size=64)
    assert isinstance(sampler.store, str) and Path(sampler.store) == holed.store
    assert sampler.shape == (12, 40, 37)


def test_integer_store_holes_read_as_the_band_mean(tmp_path: Path) -> None:
    cube = helpers.synthetic_cube(5, 20, 18, "int16", seed=2, nodata=-9999, nodata_pixels=12)
    helpers.write_geotiff(tmp_path / "i.tif", cube, nodata=-9999)
    store = ingest(tmp_path / "i.tif", tmp_path / "i.zarr", chunk=16)
    valid = helpers.reference_valid_mask(cube, -9999)
    fill = cube[:, valid].astype(np.float64).mean(axis=1).astype(np.int16)
    padded = reflect_padded(np.where(valid[None], cube, fill[:, None, None]), HALO)
    for batch in PatchSampler(store, patch_size=PATCH, batch_size=16, seed=0):
        assert batch.patches.dtype == np.int16 and not (batch.patches == -9999).any()
        for patch, row, col in zip(batch.patches, batch.rows, batch.cols, strict=True):
            np.testing.assert_array_equal(patch, reference_patch(padded, row, col, PATCH))


# --------------------------------------------------------------------------- several stores


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    """24 × 20 × 12 with holes (465 valid pixels): a third as many as ``holed`` (1410)."""
    scene = make_scene(tmp_path_factory.mktemp("small"), height=24, width=20, seed=12, nan_pixels=10,
                       nodata_pixels=5)
    assert scene.valid.sum() == 465
    return scene


def triples(batches: list[PatchBatch]) -> np.ndarray:
    """(n, 3) ``(store, row, col)`` of every centre, in order."""
    if not batches:
        return np.empty((0, 3), dtype=np.int64)
    return np.concatenate([np.stack([b.scene, b.rows, b.cols], axis=1) for b in batches])


def pooled_fill(*scenes: IngestedScene) -> np.ndarray:
    """Band means over the valid pixels of all scenes together (plain numpy), float64."""
    return np.concatenate([s.cube[:, s.valid].astype(np.float64) for s in scenes], axis=1).mean(axis=1)


def test_several_stores_every_valid_centre_once_with_the_pooled_fill(holed: IngestedScene,
                                                                     small: IngestedScene) -> None:
    """One epoch over two stores: each valid (store, row, col) once, the patches cut from the right store.

    Invalid neighbours read as the band means pooled over both scenes (what the checkpoint stores
    as the spectral mean), not as each scene's own mean.
    """
    scenes = (holed, small)
    sampler = PatchSampler([holed.store, small.store], patch_size=PATCH, batch_size=32, seed=1)
    assert sampler.stores == (str(holed.store), str(small.store)) and sampler.store == str(holed.store)
    assert sampler.valid_centres_per_store() == [1410, 465] and sampler.valid_centres() == 1875
    fill = pooled_fill(holed, small).astype(np.float32)
    np.testing.assert_allclose(sampler.fill, fill, rtol=1e-6)
    padded = [reflect_padded(np.where(s.valid[None], s.cube, fill[:, None, None]), HALO) for s in scenes]
    batches = list(sampler)
    assert len(batches) == sampler.batches_per_epoch() == 1875 // 32
    centres = triples(batches)
    assert len(np.unique(centres, axis=0)) == len(centres) == 1875 // 32 * 32
    for index, scene in enumerate(scenes):
        mine = centres[centres[:, 0] == index]
        assert scene.valid[mine[:, 1], mine[:, 2]].all()
        assert scene.valid.sum() - 31 <= len(mine) <= scene.valid.sum()  # only the last partial batch is dropped
    for batch in batches:
        for patch, s, row, col in zip(batch.patches, batch.scene, batch.rows, batch.cols, strict=True):
            np.testing.assert_allclose(patch, reference_patch(padded[s], row, col, PATCH), rtol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_several_stores_draw_in_proportion_to_valid_pixels(holed: IngestedScene, small: IngestedScene,
                                                           seed: int) -> None:
    """The first batches are a uniform draw without replacement from the valid pixels of both stores.

    With the default buffer all 13 blocks form one shuffle group, so the number of ``holed``
    centres among the first 320 follows a hypergeometric law: N = 1875, 1410 of them in ``holed``,
    n = 320 → mean 240.6, sd 7.0. Allowing 4 sd (28) makes a false failure improbable (< 1e-4) for
    any seed, while a sampler that alternated scenes (160) or ignored the small one (320) fails.
    """
    sampler = PatchSampler([holed.store, small.store], patch_size=PATCH, batch_size=32, seed=seed)
    assert sampler.blocks_per_group >= 13
    first = triples([batch for _, batch in zip(range(10), sampler, strict=False)])
    from_holed = int((first[:, 0] == 0).sum())
    assert abs(from_holed - 320 * 1410 / 1875) <= 28, from_holed


def test_several_stores_deterministic_and_resumable(holed: IngestedScene, small: IngestedScene) -> None:
    def run(seed: int, epoch: int, start_batch: int = 0) -> list[PatchBatch]:
        sampler = PatchSampler([holed.store, small.store], patch_size=PATCH, batch_size=32, seed=seed,
                               buffer_bytes=3 * 12 * 20 * 20 * 4)  # 3 blocks per shuffle group
        sampler.set_epoch(epoch, start_batch=start_batch)
        return list(sampler)

    first, again, rest = run(7, 2), run(7, 2), run(7, 2, start_batch=20)
    assert len(first) == len(again) == len(rest) + 20
    for a, b in zip(first + first[20:], again + rest, strict=True):
        np.testing.assert_array_equal(a.scene, b.scene)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.cols, b.cols)
        np.testing.assert_array_equal(a.patches, b.patches)
    order = triples(first)
    for seed, epoch in ((7, 3), (8, 2)):
        other = triples(run(seed, epoch))
        assert other.shape == order.shape and not np.array_equal(other, order), (seed, epoch)


@pytest.fixture(scope="module")
def half_square(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    """16 × 32, all valid: two full 16 × 16 blocks."""
    return make_scene(tmp_path_factory.mktemp("half"), height=16, width=32, seed=13)


def test_several_stores_shard_across_workers_without_duplicates(square: IngestedScene,
                                                                half_square: IngestedScene) -> None:
    sampler = PatchSampler([square.store, half_square.store], patch_size=PATCH, batch_size=64, seed=2,
                           buffer_bytes=1)
    assert sampler.blocks_per_group == 1  # whole blocks of 256 pixels per group: nothing dropped
    everything = {(0, r, c) for r in range(32) for c in range(32)} | {(1, r, c) for r in range(16) for c in range(32)}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(sampler, batch_size=None, num_workers=workers)
        got = triples([PatchBatch(np.asarray(b.patches), np.asarray(b.rows), np.asarray(b.cols), np.asarray(b.scene))
                       for b in loader])
        assert len(got) == len(everything), "a centre was dropped or drawn by two workers"
        assert set(map(tuple, got.tolist())) == everything


def test_several_stores_memory_is_bounded_by_the_buffer(wide: IngestedScene, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    other = make_scene(tmp_path, bands=4, height=48, width=64, seed=14)  # 12 more blocks
    block_bytes = 4 * (16 + 2 * HALO) ** 2 * 4
    spy = ReadSpy(monkeypatch)
    sampler = PatchSampler([wide.store, other.store], patch_size=PATCH, batch_size=32, seed=0,
                           buffer_bytes=block_bytes)
    n = sum(len(batch.rows) for batch in sampler)
    gc.collect()
    assert n == 64 * 96 + 48 * 64
    assert spy.peak <= 5 < 24 + 12, f"{spy.peak} blocks held at once"
    assert not spy.alive


def test_several_stores_refuse_a_mask_or_different_band_counts(holed: IngestedScene, small: IngestedScene,
                                                               wide: IngestedScene) -> None:
    with pytest.raises(ValueError, match="mask"):
        PatchSampler([holed.store, small.store], patch_size=PATCH, batch_size=8, mask=holed.valid)
    with pytest.raises(ValueError, match="band"):
        PatchSampler([holed.store, wide.store], patch_size=PATCH, batch_size=8)


def test_one_store_in_a_list_is_the_single_store_sampler(holed: IngestedScene) -> None:
    alone = PatchSampler(holed.store, patch_size=PATCH, batch_size=32, seed=5)
    listed = PatchSampler([holed.store], patch_size=PATCH, batch_size=32, seed=5)
    for a, b in zip(alone, listed, strict=True):
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.cols, b.cols)
        np.testing.assert_array_equal(a.patches, b.patches)
        assert (a.scene == 0).all()
