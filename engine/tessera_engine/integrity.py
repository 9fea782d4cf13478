"""File checksums kept in manifests: sha256 with the size and modification time of the file
as written. A load trusts a file whose size and mtime are unchanged (the fast path) and hashes
it otherwise, or always when asked (`--verify`); small files are always hashed.
"""

from __future__ import annotations

import hashlib
import os

from .errors import FileProblem

#: Files up to this size are hashed on every load (meta.json, .metadata, RNG states).
ALWAYS_HASH_BELOW = 1 << 20


class IntegrityError(FileProblem):
    """A file differs from what its manifest recorded."""


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def record(path: str) -> dict:
    """What a manifest keeps of one file just written."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}


def check(path: str, rec: dict, verify: bool = False) -> None:
    """Raise IntegrityError naming `path` unless it still holds what `rec` recorded."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise IntegrityError(f"{path}: missing (its manifest lists it)") from None
    if st.st_size != rec["size"]:
        raise IntegrityError(f"{path}: {st.st_size} bytes, its manifest recorded {rec['size']}: the file was changed")
    if not verify and st.st_size > ALWAYS_HASH_BELOW and st.st_mtime_ns == int(rec.get("mtime_ns", -1)):
        return
    if sha256_file(path) != rec["sha256"]:
        raise IntegrityError(f"{path}: its sha256 differs from the one recorded when it was written: "
                             "the file is corrupt or was changed")
