"""io.files: content hashes, atomic writes, output-path checks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from hsi_cluster.errors import OutputError
from hsi_cluster.io.files import atomic_path, check_distinct_outputs, same_file, sha256_of, write_text_atomic


def test_sha256_of_matches_hashlib_across_read_pieces(tmp_path):
    content = bytes(range(256)) * 9000  # > 2 MiB: several 1 MiB pieces
    path = tmp_path / "blob.bin"
    path.write_bytes(content)
    assert sha256_of(path) == hashlib.sha256(content).hexdigest()


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "report.json"
    write_text_atomic(target, "first")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as scratch:
            scratch.write_text("half-writ")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no scratch left behind
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_atomic_path_keeps_the_writers_suffix_and_leaves_no_file_on_failure(tmp_path):
    target = tmp_path / "plot.png"
    with atomic_path(target, ".tmp.png") as scratch:
        assert scratch.name.endswith(".tmp.png") and scratch.parent == tmp_path
        scratch.write_bytes(b"png")
    assert target.read_bytes() == b"png"
    missing = tmp_path / "never.png"
    with pytest.raises(ValueError):
        with atomic_path(missing) as scratch:
            scratch.write_bytes(b"x")
            raise ValueError("bad")
    assert not missing.exists()


def test_same_file_sees_through_links_and_relative_paths(tmp_path, monkeypatch):
    original = tmp_path / "scene.tif"
    original.write_bytes(b"pixels")
    (tmp_path / "hard.tif").hardlink_to(original)
    (tmp_path / "soft.tif").symlink_to(original)
    monkeypatch.chdir(tmp_path)
    assert same_file(Path("scene.tif"), original)
    assert same_file(tmp_path / "hard.tif", original) and same_file(tmp_path / "soft.tif", original)
    assert not same_file(tmp_path / "other.tif", original)  # a path that does not exist yet
    with pytest.raises(OutputError, match="given as both -o and --quicklook"):
        check_distinct_outputs({"-o": tmp_path / "soft.tif", "--confidence": None, "--quicklook": original})


def test_exclusive_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    from hsi_cluster.io.files import busy_output, exclusive_lock, output_lock_path

    output = tmp_path / "labels.tif"
    lock = output_lock_path(output)
    assert lock == tmp_path / ".labels.tif.lock"
    with exclusive_lock(lock, busy_output(output), remove=True):
        with pytest.raises(OutputError, match=rf"labels.tif: another hsicluster command is writing it \(pid "
                                              rf"{os.getpid()}\); wait for it to finish"):
            with exclusive_lock(lock, busy_output(output)):
                pass
    assert not lock.exists()
    with exclusive_lock(lock, busy_output(output)):  # free again
        pass


def test_a_file_system_without_locks_leaves_the_command_unlocked(tmp_path, monkeypatch):
    """flock failing with ENOSYS or ENOLCK (NFS without lockd, Lustre without -o flock) refused every predict and
    train as "another hsicluster command is writing it (pid unknown)": they run unlocked there."""
    import errno
    import fcntl

    from hsi_cluster.io.files import busy_output, exclusive_lock, output_lock_path

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    output = tmp_path / "labels.tif"
    ran = False
    with exclusive_lock(output_lock_path(output), busy_output(output), remove=True):
        ran = True
    assert ran


def test_the_lock_of_an_output_named_through_a_link_is_its_targets(tmp_path):
    from hsi_cluster.io.files import output_lock_path

    (tmp_path / "out.tif").write_bytes(b"")
    (tmp_path / "link.tif").symlink_to(tmp_path / "out.tif")
    assert output_lock_path(tmp_path / "link.tif") == output_lock_path(tmp_path / "out.tif")


def test_names_and_paths_too_long_for_the_file_system_are_refused_in_one_line(tmp_path: Path) -> None:
    """The system's "File name too long" came as an unexpected OSError (exit 1) from any output check, even from
    ``Path.is_dir`` on a parent whose name is too long; a name just short enough failed mid-training, when the
    checkpoint's temporary file (22 bytes longer) was written."""
    from hsi_cluster.io.files import COMPANION_ROOM, check_name_length, check_output

    check_name_length(tmp_path / ("n" * (255 - COMPANION_ROOM)))  # the longest name that leaves the room
    with pytest.raises(OutputError, match=r"the name of the output is 231 bytes long, and with the files written "
                                          r"beside it the file system takes at most 223; choose a shorter name$"):
        check_output(tmp_path / ("n" * 227 + ".tif"), replace=False)
    with pytest.raises(OutputError, match=r"a folder name in the path of the output is 260 bytes long, more than the "
                                          r"file system takes \(255\); choose a shorter path$"):
        check_output(tmp_path / ("d" * 260) / "x.tif", replace=False)
    assert COMPANION_ROOM >= len(".partial.12345678.tmp") + 1 + len(".restart-9") - len(".ckpt")
