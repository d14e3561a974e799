"""Content fingerprints of files, cheap enough for multi-GB model shards (torch-free)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Files up to this size are hashed whole; larger ones (model shards) by size, head and tail.
FULL_HASH_LIMIT = 64 << 20


def file_fingerprint(path: Path) -> str:
    """A content hash: whole for tables and adapters, size + first and last MiB for multi-GB
    model shards (enough to notice a swapped file)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(fh.read(1 << 20))
            fh.seek(-(1 << 20), os.SEEK_END)
            digest.update(fh.read())
    return f"{size}:{digest.hexdigest()[:16]}"


def tree_fingerprint(paths: list[Path]) -> str:
    """One digest over the contents of files and folders (a missing path counts as such)."""
    digest = hashlib.sha256()
    for path in paths:
        if not path.exists():
            digest.update(f"{path}=missing".encode())
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(f"{file.relative_to(path.parent)}={file_fingerprint(file)}".encode())
    return digest.hexdigest()
