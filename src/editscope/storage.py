"""Atomic file writes, checksums and the cache directory.

Everything editscope writes that another process may read (cached models, statistics, run
folders) goes through these helpers: write to a temporary sibling, flush and fsync, then
``os.replace`` -- so a reader sees either the old or the new content, never half of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 22


def cache_home() -> Path:
    """The cache root: ``$EDITSCOPE_HOME`` or ``~/.cache/editscope``."""
    env = os.environ.get("EDITSCOPE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "editscope"


def installed_file(distribution: str, relative: str) -> Path | None:
    """The file at ``relative`` (its path inside the wheel) of an installed distribution, found through
    ``importlib.metadata`` without importing the package; ``None`` where the distribution holds no such file.
    Raises ``importlib.metadata.PackageNotFoundError`` where the distribution is not installed."""
    from importlib import metadata

    dist = metadata.distribution(distribution)
    for file in dist.files or ():
        if str(file).replace("\\", "/") == relative:
            return Path(str(dist.locate_file(file)))
    return None


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temp file in the same folder + rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``path`` only if the block succeeds.

    An existing ``path`` is replaced; a failure leaves no trace of the new folder.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(folder: Path, meta: dict[str, object]) -> dict[str, object]:
    """Write ``manifest.json`` with the sha256 and size of every file in ``folder``."""
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != "manifest.json"
    }
    manifest = {**meta, "files": files}
    atomic_write_json(folder / "manifest.json", manifest)
    return manifest


def verify_manifest(folder: Path, *, full: bool) -> str | None:
    """Check ``folder`` against its manifest; return a problem description or ``None``.

    ``full`` recomputes every checksum; otherwise only presence and sizes are checked.
    """
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        return "no manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as exc:
        return f"unreadable manifest.json ({exc})"
    for name, info in files.items():
        path = folder / name
        if not path.is_file():
            return f"missing {name}"
        if path.stat().st_size != info["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, manifest says {info['bytes']}"
        if full and sha256_file(path) != info["sha256"]:
            return f"{name} checksum mismatch"
    return None
