"""The file helpers every layer uses: atomic writes and the freshness check."""

from __future__ import annotations

import os

import pytest

from whisper_sv.core.fsutil import atomic_write_bytes, atomic_write_text, newer, temp_name


def test_atomic_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "data.json"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second ö")
    assert path.read_text(encoding="utf-8") == "second ö"
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "data.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_temporary_names_are_unique_hidden_and_name_their_writer(tmp_path):
    a, b = temp_name(tmp_path / "x.txt"), temp_name(tmp_path / "x.txt")
    assert a != b and a.parent == tmp_path
    assert a.name.startswith(".x.txt.tmp-") and f"-{os.getpid()}-" in a.name
    assert temp_name(tmp_path / "c.png", ".png").suffix == ".png"


def test_newer(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert not newer(a, b)  # nothing made yet
    b.write_text("b")
    assert not newer(a, b)
    a.write_text("a")
    os.utime(b, ns=(1, 1))
    assert newer(a, b)
    os.utime(a, ns=(1, 1))
    assert not newer(a, b)  # same time: not newer
    b.unlink()
    assert newer(a, b)  # its input is gone: the output stands
