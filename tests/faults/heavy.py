"""Benign images that are heavy to decode (generated, cached per test process): a large
progressive JPEG keeps a worker busy for a fraction of a second, and needs ~300 MB of
decoder memory at 100 megapixels (libjpeg holds every coefficient of a multi-scan image)."""

from __future__ import annotations

import functools
import io

from factories import photo_like


@functools.lru_cache(maxsize=4)
def progressive_jpeg(side: int) -> bytes:
    """A `side` x `side` progressive JPEG of a smooth generated picture (a few MB)."""
    big = photo_like(77, 500, 500).resize((side, side))
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=75, progressive=True)
    return buf.getvalue()
