"""Work areas keyed by config and input content: a touch or a copy keeps them, new content does not."""

import json
import os
import shutil

from dnd.digests import cached_sha256, input_digests
from dnd.provenance import file_sha256
from dnd.workarea import KEY_NAME, stage_work_dir, start_fresh, work_dir_for


def _inputs(root):
    data = root / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "shard-0.parquet").write_bytes(b"a" * 100)
    (data / "manifest.json").write_text("{}")
    return data


def test_touch_and_copy_keep_the_work_area_new_content_does_not(tmp_path):
    work = tmp_path / "work"
    data = _inputs(tmp_path)
    first = stage_work_dir("train_x", "m", {"steps": 3}, [data], root=work)
    assert json.loads((first / KEY_NAME).read_text())["stage"] == "train_x"
    for path in data.rglob("*"):
        os.utime(path, (path.stat().st_atime + 100, path.stat().st_mtime + 100))
    assert work_dir_for("train_x", "m", {"steps": 3}, [data], root=work)[0] == first
    copy = tmp_path / "elsewhere" / "data"
    shutil.copytree(data, copy)
    assert work_dir_for("train_x", "m", {"steps": 3}, [copy], root=work)[0] == first
    (data / "train" / "shard-0.parquet").write_bytes(b"b" * 100)
    assert work_dir_for("train_x", "m", {"steps": 3}, [data], root=work)[0] != first
    assert work_dir_for("train_x", "m", {"steps": 4}, [copy], root=work)[0] != first


def test_the_digest_cache_is_keyed_by_size_and_mtime(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"x" * 10)
    digest = cached_sha256(path, tmp_path / "cache")
    assert digest == file_sha256(path)
    # an entry whose stamp still matches is trusted (that is what makes reruns cheap) ...
    entry = next((tmp_path / "cache").rglob("*.json"))
    cached = json.loads(entry.read_text())
    entry.write_text(json.dumps({**cached, "sha256": "stale"}))
    assert cached_sha256(path, tmp_path / "cache") == "stale"
    # ... and a rewrite (new mtime) is read again
    path.write_bytes(b"y" * 10)
    os.utime(path, ns=(cached["mtime_ns"] + 10**9, cached["mtime_ns"] + 10**9))
    assert cached_sha256(path, tmp_path / "cache") == file_sha256(path)
    assert [name for name, _ in input_digests([tmp_path / "file.bin"], None)] == ["file.bin"]


def test_fresh_removes_only_the_checkpoints(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"0")
    (tmp_path / "images").mkdir()
    assert start_fresh(tmp_path) and not (tmp_path / "checkpoints").exists() and (tmp_path / "images").exists()
    assert not start_fresh(tmp_path)
