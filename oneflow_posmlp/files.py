"""Small file helpers shared by the weight conversion and the tar shards (standard library only)."""
import hashlib


def sha256_of(path, chunk=1 << 20):
    """The SHA-256 hex digest of the file at ``path``, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
