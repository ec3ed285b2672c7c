"""Local directories for options that also accept a Hugging Face hub id.

Nothing is downloaded at run time: a hub id resolves only to a copy already in the local hub cache;
otherwise the error says so at once and asks for a directory.
"""

from __future__ import annotations

from pathlib import Path


def local_dir(value: str, option: str, alternatives: str = "") -> Path:
    """``value`` as an existing directory, or the cached snapshot of the hub id ``value``."""
    path = Path(value)
    if path.is_dir():
        return path
    other = f" or {alternatives}" if alternatives else ""
    if path.exists() or value.count("/") > 1 or value.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{option} {value!r}: not a directory; expected a model or tokenizer directory{other}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(value, local_files_only=True))
    except Exception:
        raise FileNotFoundError(
            f"{option} {value!r}: no such local directory, and the hub id {value!r} is not in the local cache; "
            f"nothing is downloaded here: download it where there is network and pass its directory{other}"
        ) from None
