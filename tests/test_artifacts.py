"""Atomic writes: a failed write leaves the previous file and no temporary behind."""

from __future__ import annotations

import pandas as pd
import pytest

from ser.artifacts import atomic_path, read_json, write_json, write_parquet, write_with


def test_write_with_creates_folders_and_moves_into_place(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    write_with(target, lambda path: path.write_text("hello"))
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"version": 1})

    def half_write(path):
        path.write_text('{"version": ')
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_with(target, half_write)
    assert read_json(target) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failing_first_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(ValueError), atomic_path(target) as temporary:
        temporary.write_bytes(b"partial")
        raise ValueError("stop")
    assert list(tmp_path.iterdir()) == []


def test_temporary_sits_beside_the_target_with_its_suffix(tmp_path):
    target = tmp_path / "model.keras"
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path
        assert temporary.name.startswith(".model.")
        assert temporary.suffix == ".keras"  # some writers choose the format by suffix
        temporary.write_bytes(b"x")
    assert target.read_bytes() == b"x"


def test_json_and_parquet_round_trip(tmp_path):
    payload = {"test": {"uar": 0.5, "clips": 3}, "labels": ["sad", "angry"]}
    write_json(tmp_path / "m.json", payload)
    assert read_json(tmp_path / "m.json") == payload
    assert (tmp_path / "m.json").read_text().endswith("}\n")
    frame = pd.DataFrame({"path": ["a", "b"], "x": [1.5, 2.5]})
    write_parquet(tmp_path / "f.parquet", frame)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "f.parquet"), frame)
