"""Float grey images between Pillow and numpy without copying the pixels.

The decode stage makes luma with Pillow (`convert("F")`, `reduce`) and the hashes read it
with numpy; the previews go back to Pillow for its box reduction. The usual bridges copy:
`np.asarray(image)` goes through `Image.tobytes` (the raw encoder, chunk by chunk, then a
join: two copies, about 0.5 ms per megapixel of float luma) and `Image.fromarray` of a
float32 array allocates a zero-filled image and decodes into it (about 0.4 ms per
megapixel). On a 1 MP JPEG that was ~0.9 ms of a ~6 ms fingerprint. Here:

- `float_array`: Pillow's Arrow export (the C data interface, documented in Pillow's
  "Arrow support"), read as a numpy view. The exported memory is reference counted by
  Pillow, so the view stays valid after the image is gone; the view holds the capsule.
- `float_image`: `Image.frombuffer`'s own zero-copy path (`core.map_buffer`), which
  `frombuffer` only takes for 8-bit modes although it maps 32-bit rows just as well; the
  image holds a reference to the array.

Both fall back to the copying bridges for anything they do not expect (an image in more
than one memory block, which Arrow cannot export: floats over 16 MB; another Pillow), so
the values are the same either way, only the copies differ.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, _imaging

__all__ = ["PREVIEW_SHORT_SIDE", "float_array", "float_image", "preview", "reduce_float"]

Float32Array = npt.NDArray[np.float32]


class _ArrowSchema(ctypes.Structure):
    """struct ArrowSchema of the Arrow C data interface (only its leading fields are read)."""

    _fields_ = (
        ("format", ctypes.c_char_p),
        ("name", ctypes.c_char_p),
        ("metadata", ctypes.c_char_p),
        ("flags", ctypes.c_int64),
        ("n_children", ctypes.c_int64),
    )


class _ArrowArray(ctypes.Structure):
    """struct ArrowArray of the Arrow C data interface (a stable ABI)."""

    _fields_ = (
        ("length", ctypes.c_int64),
        ("null_count", ctypes.c_int64),
        ("offset", ctypes.c_int64),
        ("n_buffers", ctypes.c_int64),
        ("n_children", ctypes.c_int64),
        ("buffers", ctypes.POINTER(ctypes.c_void_p)),
        ("children", ctypes.c_void_p),
        ("dictionary", ctypes.c_void_p),
        ("release", ctypes.c_void_p),
        ("private_data", ctypes.c_void_p),
    )


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = (ctypes.py_object, ctypes.c_char_p)

# Arrow format and numpy type string of the single-band modes whose export is one plain buffer
_FORMATS = {"F": (b"f", "<f4"), "L": (b"C", "|u1")}


class _ExportedPixels:
    """The base of a numpy view of Pillow's pixels: the array interface of the exported
    buffer, and the Arrow capsule whose release (when this object goes) lets Pillow free it."""

    def __init__(self, capsule: object, address: int, shape: tuple[int, int], typestr: str):
        self._capsule = capsule
        self.__array_interface__: dict[str, Any] = {
            "version": 3, "shape": shape, "typestr": typestr, "data": (address, True)}


def _exported_view(im: Image.Image) -> npt.NDArray[Any] | None:
    """A read-only view of the pixels of a loaded "F" or "L" image, or None if Pillow will not
    export them as one buffer of width * height values."""
    expected = _FORMATS.get(im.mode)
    if expected is None or not np.little_endian:
        return None
    arrow_format, typestr = expected
    try:
        schema_capsule, capsule = im.__arrow_c_array__()
        schema = _ArrowSchema.from_address(_capsule_pointer(schema_capsule, b"arrow_schema"))
        array = _ArrowArray.from_address(_capsule_pointer(capsule, b"arrow_array"))
    except (AttributeError, ValueError, TypeError, OSError):
        return None  # no Arrow support, or pixels in more than one block
    w, h = im.size
    if (schema.format != arrow_format or schema.n_children != 0
            or array.length != w * h or array.offset != 0 or array.n_buffers != 2
            or array.n_children != 0 or not array.buffers[1]):
        return None
    address = array.buffers[1]
    view: npt.NDArray[Any] = np.asarray(_ExportedPixels(capsule, address, (h, w), typestr))
    return view


def float_array(im: Image.Image) -> Float32Array:
    """The pixels of a single-band image as float32 (H x W); for an "F" image a read-only view
    (no copy), for "L" one conversion. Same values as ``np.asarray(im, np.float32)``."""
    im.load()
    view = _exported_view(im) if min(im.size) > 0 else None
    if view is None:
        fallback: Float32Array = np.asarray(im, dtype=np.float32)
        return fallback
    if view.dtype != np.float32:
        converted: Float32Array = view.astype(np.float32)
        return converted
    return view


def float_image(a: npt.NDArray[np.floating]) -> Image.Image:
    """An "F" image of a 2-D array (values as float32), sharing its memory when it is
    C-contiguous float32. The image must be treated as read-only."""
    arr = np.ascontiguousarray(a, dtype=np.float32)
    h, w = arr.shape
    try:
        core = _imaging.map_buffer(arr, (w, h), "raw", 0, ("F", 0, 1))
    except (AttributeError, TypeError, ValueError):
        return Image.fromarray(arr, "F")
    image: Image.Image = Image.Image()._new(core)
    image.readonly = 1
    return image


def reduce_float(a: npt.NDArray[np.floating], factor: int) -> Float32Array:
    """Pillow's box reduction (`Image.reduce`) of a float grey array by an integer factor."""
    return float_array(float_image(a).reduce(factor))


PREVIEW_SHORT_SIDE = 160
"""gridhist area-averages to 32 x 32 and border detection looks at row and column
statistics: neither needs the >= 512 px that PDQ's agreement with the reference does, so
they run on a copy box-reduced to about this short side (5-10x cheaper on a 1 MP frame).
The same for images (fingerprint.py) and video frames (video.py)."""


def preview(luma: npt.NDArray[np.floating]) -> tuple[Float32Array, int]:
    """A box-reduced copy of a frame's luma for gridhist and border detection, and the
    reduction factor (1: the frame itself, returned as it is)."""
    factor = min(luma.shape) // PREVIEW_SHORT_SIDE
    if factor < 2:
        return np.asarray(luma, dtype=np.float32), 1
    return reduce_float(luma, factor), factor
