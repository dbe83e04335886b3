"""Content digests of input files, cached so that an unchanged file is read once.

A work area is keyed by what its inputs *contain*, not by when they were written: a `touch`, a copy
or an rsync of the inputs keeps its checkpoints; new content gets a fresh area. Hashing a data set of
many GB takes minutes, so each file's sha256 is cached under the work root, keyed by the file's
(absolute path, size, mtime): a later run re-reads only files that changed (or were touched).
One small JSON file per input file, written atomically, so concurrent jobs never corrupt the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from dnd.atomic import write_json
from dnd.provenance import file_sha256

log = logging.getLogger("dnd.digests")
CACHE_DIR_NAME = ".digests"


def _cache_file(cache_root: Path, path: Path) -> Path:
    name = hashlib.sha256(str(path).encode()).hexdigest()[:32]
    return cache_root / CACHE_DIR_NAME / name[:2] / f"{name}.json"


def cached_sha256(path: Path, cache_root: Path | None) -> str:
    """sha256 of `path`'s bytes, from the cache when (path, size, mtime) are unchanged."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    entry = _cache_file(cache_root, path) if cache_root is not None else None
    if entry is not None and entry.exists():
        try:
            cached = json.loads(entry.read_text())
            if {k: cached.get(k) for k in stamp} == stamp:
                return cached["sha256"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry: hash again
    digest = file_sha256(path)
    if entry is not None:
        try:
            write_json(entry, {**stamp, "sha256": digest})
        except OSError as err:  # a read-only work root still works, uncached
            log.debug("digest cache not written for %s: %s", path, err)
    return digest


def input_digests(paths: list[Path], cache_root: Path | None) -> list[tuple[str, str]]:
    """(name, sha256) of each input file, or of every file under an input folder, names relative to the
    input's own name, so the same content at another path (a copy, another checkout) has the same digests."""
    entries = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            entries.extend((f"{path.name}/{f.relative_to(path).as_posix()}", cached_sha256(f, cache_root)) for f in files)
        else:
            entries.append((path.name, cached_sha256(path, cache_root)))
    return entries
