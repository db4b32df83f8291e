"""Atomic writes: a failed write leaves the previous file and no temporary behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from ser.ops.atomic import atomic_path, read_json, write_json, write_parquet, write_with


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


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=oct)
def test_outputs_get_the_permissions_open_would_give(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "m.json", {"uar": 0.5})
        with atomic_path(tmp_path / "model.keras") as temporary:
            temporary.write_bytes(b"x")
    finally:
        os.umask(previous)
    for name in ("m.json", "model.keras"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_temporaries_left_by_a_killed_writer_are_removed_by_the_next_run(tmp_path):
    target = tmp_path / "features.parquet"
    killed = (
        "import os, signal, sys; from pathlib import Path; from ser.ops.atomic import atomic_path\n"
        "with atomic_path(Path(sys.argv[1])) as temporary:\n"
        "    temporary.write_bytes(b'half a parquet file')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    next_run = "import sys; from pathlib import Path; from ser.ops.atomic import write_json\n"
    next_run += "write_json(Path(sys.argv[1]), {'done': True})\n"
    for _ in range(3):
        subprocess.run([sys.executable, "-c", killed, str(target)], check=False)
        assert len(list(tmp_path.glob(".features.*.tmp.parquet"))) == 1  # not one per try
    subprocess.run([sys.executable, "-c", next_run, str(target)], check=True)
    assert [p.name for p in tmp_path.iterdir()] == ["features.parquet"]


def test_only_stale_temporaries_of_the_same_target_are_removed(tmp_path):
    day_ago = time.time() - 86_400
    names = {
        "stale": ".features.k1ll3d_x.tmp.parquet",  # as tempfile.mkstemp named them
        "live": ".features.0123abcd.tmp.parquet",  # another process writing right now
        "other": ".features_val.0123abcd.tmp.parquet",  # another target's
        "suffix": ".features.0123abcd.tmp.json",
    }
    for key, name in names.items():
        (tmp_path / name).write_bytes(b"x")
        if key != "live":
            os.utime(tmp_path / name, (day_ago, day_ago))
    write_parquet(tmp_path / "features.parquet", pd.DataFrame({"x": [1]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["features.parquet", names["live"], names["other"], names["suffix"]]
    )
