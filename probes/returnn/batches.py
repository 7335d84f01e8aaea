"""Sequence tags of a RETURNN batch as bytes: which sequences a step trained on, hashed like any tensor."""

from __future__ import annotations

from typing import Any

import numpy as np


def seq_tag_bytes(tags: Any) -> np.ndarray:
    """The tags, one per line, as uint8: a batch with other sequences (or another order) hashes otherwise."""
    text = "\n".join(str(tag.decode() if isinstance(tag, bytes) else tag) for tag in np.asarray(tags).reshape(-1))
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
