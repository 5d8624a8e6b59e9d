"""Strict image decoding: a truncated or corrupt image must be an error, not a grey picture.

lmms-eval sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`` for the whole process when it is
imported, after which PIL quietly fills a cut-short file with grey. Every place that checks an
image decodes it inside ``strict_decoding()`` so the answer does not depend on what was imported.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, ImageFile

_LOCK = threading.Lock()


@contextmanager
def strict_decoding() -> Iterator[None]:
    """Decode with LOAD_TRUNCATED_IMAGES off, then put back whatever was set."""

    with _LOCK:
        lenient = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def oversized(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an image over PIL's decompression-bomb limit (what makes it fail to
    decode), read from its header alone; None for any other image or non-image."""

    with _LOCK:
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # read the header only; nothing is decoded
        try:
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
        except Exception:
            return None
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    return (width, height) if limit and width * height > 2 * limit else None
