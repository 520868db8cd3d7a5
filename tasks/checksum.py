"""The checksum the deploy compares files by: sha256 of the text, as `sha256sum` prints it on the host."""

from __future__ import annotations

import hashlib


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
