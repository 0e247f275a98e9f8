"""A webui checkpoint's identity: the name and weights hash its cache entries are keyed by."""

from __future__ import annotations

from sd_ov import file_hash


def checkpoint_identity(info) -> tuple[str, str]:
    """(name, sha256) of a webui CheckpointInfo; the webui caches the hash in cache.json."""
    sha256 = getattr(info, "sha256", None)
    if not sha256 and hasattr(info, "calculate_shorthash"):
        info.calculate_shorthash()
        sha256 = info.sha256
    return info.model_name, sha256 or file_hash(info.filename)
