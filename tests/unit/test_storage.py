import json

import pytest

from editscope.storage import atomic_directory, atomic_write_json, atomic_write_text, verify_manifest, write_manifest


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "f.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_atomic_directory_failure_leaves_old_content(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "w").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "w").write_text("new")
            raise RuntimeError("killed")
    assert (target / "w").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_manifest_detects_corruption(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"abcdef")
    write_manifest(tmp_path, {"name": "x"})
    assert verify_manifest(tmp_path, full=True) is None
    (tmp_path / "weights.bin").write_bytes(b"abcdeX")  # same size, different content
    assert verify_manifest(tmp_path, full=False) is None
    assert "checksum" in verify_manifest(tmp_path, full=True)
    atomic_write_text(tmp_path / "weights.bin", "short")
    assert "bytes" in verify_manifest(tmp_path, full=False)
    (tmp_path / "weights.bin").unlink()
    assert "missing" in verify_manifest(tmp_path, full=False)
