"""The decode stage: attachment bytes -> small float32 luminance images, safely and fast.

- The format comes from magic bytes only (`sniff_format`); Pillow is then restricted to that
  one plugin, so a file never reaches a parser it was not sniffed as.
- Limits are checked before pixels are decoded: byte size, then the pixel count from the header
  (and again for every frame/page), with the limit passed in, never Pillow's process-global
  MAX_IMAGE_PIXELS (Pillow's own DecompressionBombError, which fires at twice that global, is
  mapped to the same reason).
- Reduced-size decoding: JPEG is decoded by libjpeg at the smallest of 1/2, 1/4, 1/8 scale
  (`Image.draft`, DCT-domain) that keeps both sides >= WORKING_SHORT_SIDE; then anything whose
  short side is still >= 2 * WORKING_SHORT_SIDE is box-reduced (`Image.reduce`, integer factors),
  so frames have a short side of 512..1023 px (12 MP JPEG: 1/4 scale, 1008 x 756).
  Why 512: PDQ's Jarosz filter box-averages to 64 x 64 anyway, but its sampling grid is tied to
  the pixel grid, and on coarser grids the hashes drift from the full-size reference. Measured
  against expected.csv and 80 extra crops/rescales of the vector photos (full-size pdqhash as
  reference), max / mean bits for quality >= 80: short side >= 256: 12 / 2.7-3.4;
  >= 384: 12-16 / 1.5-2.4; >= 512: 4-6 / 0.1-1.0. The price is ~4 ms more libjpeg time for a
  12 MP JPEG (1/4 instead of 1/8 scale; entropy decoding dominates either way).
- Luminance Y = 0.299 R + 0.587 G + 0.114 B (PDQ's); alpha is composited over white, using
  premultiplied reduction so transparent pixels' hidden colours do not bleed in.
- EXIF orientation (JPEG, PNG, WebP, TIFF, ...) is applied to the small arrays, cheaply (the
  first frame's orientation, to every frame).
- Animations (GIF, APNG, WebP) and multi-page TIFF: every distinct frame (a frame equal to the
  one before it is skipped), up to `max_frames`; the deadline is checked between frames.
- Errors: only `SkipImage` leaves `decode`. Partially decoded pixels are never hashed: a
  truncated or corrupt single image is skipped ("truncated"/"corrupt"); for multi-frame files,
  the frames decoded completely before a later frame that is broken or over the pixel limit are
  kept (viewers show them too), and that frame is not decoded.

- Memory: a decoder that runs out of memory (the worker's address-space limit,
  `workers.memory_limit`) is `memory-limit`. libjpeg keeps every DCT coefficient of a
  progressive JPEG in memory whatever the scale it decodes at, and reports running out as a
  broken stream; so that need is worked out from the header and compared with what the limit
  leaves before decoding (a 100 MP progressive JPEG needs about 300 MB).

Reason codes: not-an-image, unsupported-format, too-large, too-many-pixels, memory-limit,
truncated, corrupt, unsupported-mode, deadline.
"""

from __future__ import annotations

import io
import math
import resource
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, features

from mailfilter.errors import SkipImage
from mailfilter.magic import image_format
from mailfilter.settings import ImageSettings

__all__ = ["WORKING_SHORT_SIDE", "DecodedImage", "decode", "sniff_format"]

#: Frames are reduced (by integer factors) so that their short side is at least this many pixels
#: (and under twice that), unless the image is smaller. Chosen from measurements against the
#: PDQ reference: see the module docstring.
WORKING_SHORT_SIDE = 512
#: The long side is reduced further (changing the aspect ratio) past this many pixels, so a
#: 1 x 50,000,000 strip does not become a 200 MB float array. PDQ scales each axis separately.
MAX_WORKING_LONG_SIDE = 8 * WORKING_SHORT_SIDE

_ORIENTATION_TAG = 0x0112

Luma = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class DecodedImage:
    width: int  # full image size after EXIF orientation
    height: int
    image_format: str  # "JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", "AVIF"
    frame_count: int  # frames in the file
    frames: tuple[Luma, ...]  # float32 luminance (0..255) of each distinct frame, reduced size


# --- sniffing ----------------------------------------------------------------------------

# Formats the decoder may hand to Pillow; other images (ICO, JPEG 2000, JPEG XL, PSD) are
# recognised by `mailfilter.magic` but refused here as unsupported.
_DECODABLE = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", "AVIF"})


def sniff_format(data: bytes) -> str | None:
    """The image format from the leading magic bytes (never a declared type or file name),
    or None when the bytes are not an image format we know."""
    return image_format(data)


# --- Pillow plugins ----------------------------------------------------------------------

_heif_registered: bool | None = None


def _heif_available() -> bool:
    """Register pillow-heif's opener once, if that optional package is installed."""
    global _heif_registered
    if _heif_registered is None:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _heif_registered = True
        except Exception:  # not installed, or broken: HEIF is then unsupported
            _heif_registered = False
    return _heif_registered


def _pillow_format(fmt: str) -> str:
    """The Pillow plugin that may open a file sniffed as `fmt`, or SkipImage."""
    if fmt == "AVIF":
        if features.check("avif"):
            return "AVIF"
        if _heif_available() and "AVIF" in Image.OPEN:
            return "AVIF"
        raise SkipImage("unsupported-format", "AVIF: this Pillow build cannot decode AVIF")
    if fmt == "HEIF":
        if _heif_available():
            return "HEIF"
        raise SkipImage("unsupported-format", "HEIF: install pillow-heif to decode HEIC/HEIF")
    return fmt


# --- pixels to luminance -----------------------------------------------------------------


def _reduction(size: tuple[int, int], target: int) -> tuple[int, int]:
    """Integer box-reduction factors (x, y) for a frame of `size`."""
    w, h = size
    f = max(1, min(w, h) // target)
    fx = max(f, -(-w // MAX_WORKING_LONG_SIDE))
    fy = max(f, -(-h // MAX_WORKING_LONG_SIDE))
    return fx, fy


def _reduce(im: Image.Image, target: int) -> Image.Image:
    fx, fy = _reduction(im.size, target)
    if fx == 1 and fy == 1:
        return im
    return im.reduce((fx, fy))


def _as_float(im: Image.Image) -> Luma:
    arr: Luma = np.asarray(im, dtype=np.float32)
    return arr


def _luma_rgb(im: Image.Image) -> Luma:
    """Y of an RGB(X/A) image: Pillow's RGB->F conversion uses exactly PDQ's coefficients."""
    return _as_float(im.convert("F"))


def _composite_premultiplied(im: Image.Image) -> Luma:
    """Y of a reduced premultiplied image ("RGBa" or "La") composited over white:
    Y = Y(premultiplied colour) + (255 - alpha), as the luma coefficients sum to 1."""
    bands = im.split()
    alpha = _as_float(bands[-1])
    base = _as_float(bands[0]) if im.mode == "La" else _luma_rgb(Image.merge("RGB", bands[:3]))
    out: Luma = base + (np.float32(255.0) - alpha)
    return out


def _high_depth_luma(im: Image.Image, target: int) -> Luma:
    """16-bit and 32-bit integer or float grey ("I;16*", "I", "F"): reduce as float, then map
    the value range onto 0..255 without clipping (PDQ's bits do not depend on the scale)."""
    raw_mode = im.mode
    small = _reduce(im.convert("F") if raw_mode != "F" else im, target)
    arr = _as_float(small).astype(np.float64)
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(arr.min()) if arr.size else 0.0
    hi = float(arr.max()) if arr.size else 0.0
    if raw_mode.startswith("I;16"):
        arr = arr / 257.0
    elif lo >= 0.0 and hi <= 1.0 and raw_mode == "F":
        arr = arr * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        arr = arr / 257.0
    elif hi > lo:
        arr = (arr - lo) * (255.0 / (hi - lo))
    else:
        arr = np.zeros_like(arr)
    out: Luma = arr.astype(np.float32)
    return out


def _alpha_is_opaque(im: Image.Image) -> bool:
    extrema = im.getextrema()  # per band, computed in place without copies
    alpha = extrema[-1]
    return isinstance(alpha, tuple) and alpha[0] == 255


def _frame_luma(im: Image.Image, target: int) -> Luma:
    """Float32 luminance of the loaded current frame of `im`, reduced to the working size."""
    mode = im.mode
    has_transparency = "transparency" in im.info
    if mode == "1":
        im = im.convert("L")
        mode = "L"
    elif mode == "P":
        im = im.convert("RGBA" if has_transparency else "RGB")
        mode = im.mode
    elif mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    elif mode in ("L", "RGB") and has_transparency:
        # A PNG tRNS colour key: one colour is transparent.
        im = im.convert("LA" if mode == "L" else "RGBA")
        mode = im.mode

    if mode in ("RGBA", "LA"):
        if _alpha_is_opaque(im):
            small = _reduce(im, target)
            return _as_float(small.getchannel(0)) if mode == "LA" else _luma_rgb(small)
        premultiplied = im.convert("RGBa" if mode == "RGBA" else "La")
        return _composite_premultiplied(_reduce(premultiplied, target))
    if mode in ("RGBa", "La"):
        return _composite_premultiplied(_reduce(im, target))
    if mode == "L":
        return _as_float(_reduce(im, target))
    if mode in ("RGB", "RGBX"):
        return _luma_rgb(_reduce(im, target))
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return _luma_rgb(_reduce(im, target).convert("RGB"))
    if mode.startswith("I") or mode == "F":
        return _high_depth_luma(im, target)
    try:
        rgb = im.convert("RGBA")
    except (ValueError, OSError) as exc:
        raise SkipImage("unsupported-mode", f"image mode {mode}") from exc
    return _frame_luma(rgb, target)


def _orient(luma: Luma, orientation: int) -> Luma:
    """Apply an EXIF orientation (1..8) to a 2-D array, as ImageOps.exif_transpose would."""
    if orientation == 2:
        out = np.fliplr(luma)
    elif orientation == 3:
        out = np.rot90(luma, 2)
    elif orientation == 4:
        out = np.flipud(luma)
    elif orientation == 5:
        out = luma.T
    elif orientation == 6:
        out = np.rot90(luma, -1)
    elif orientation == 7:
        out = np.rot90(luma, 2).T
    elif orientation == 8:
        out = np.rot90(luma, 1)
    else:
        out = luma
    result: Luma = np.ascontiguousarray(out)
    return result


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation of the current frame, 1 when absent, invalid or unreadable."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # broken EXIF must not cost us the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# --- decode ------------------------------------------------------------------------------


def _check_pixels(size: tuple[int, int], limits: ImageSettings, what: str = "image") -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise SkipImage("corrupt", f"{what} has size {w}x{h}")
    if w * h > limits.max_pixels:
        raise SkipImage(
            "too-many-pixels", f"{what} is {w}x{h} = {w * h} pixels > {limits.max_pixels}"
        )


def _address_space_left() -> int | None:
    """Bytes this process may still map under its RLIMIT_AS (the worker memory limit); None
    when there is no limit (or it cannot be told)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return soft - int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_jpeg_memory(im: Image.Image) -> None:
    """SkipImage("memory-limit") when a progressive JPEG's coefficient buffers cannot fit in
    what the memory limit leaves: 64 coefficients of 2 bytes per 8x8 block of each component,
    held for the whole image (libjpeg's multi-scan mode, draft scaling or not)."""
    if not im.info.get("progressive"):
        return
    width, height = im.size
    # JpegImageFile.layer: (component id, horizontal sampling, vertical sampling, table)
    layers = getattr(im, "layer", None) or [("", 1, 1, 0)] * len(im.getbands())
    h_max = max(max(int(x[1]), 1) for x in layers)
    v_max = max(max(int(x[2]), 1) for x in layers)
    need = sum(math.ceil(width * max(int(x[1]), 1) / (8 * h_max))
               * math.ceil(height * max(int(x[2]), 1) / (8 * v_max)) * 128 for x in layers)
    left = _address_space_left()
    if left is not None and need > left:
        raise SkipImage("memory-limit", f"progressive JPEG {width}x{height} needs about "
                        f"{need >> 20} MiB to decode, {max(left, 0) >> 20} MiB left under "
                        "the memory limit")


def _check_deadline(start: float, limits: ImageSettings, frame: int) -> None:
    elapsed = time.monotonic() - start
    if elapsed > limits.deadline:
        raise SkipImage(
            "deadline", f"{elapsed:.2f}s > {limits.deadline:g}s before frame {frame}"
        )


def _frame_count(im: Image.Image) -> int:
    """Frames in the file (GIF: found by walking the whole file). 1 when the walk fails on a
    broken or oversized later frame: only the first frame, already decoded, is used then."""
    try:
        return max(1, int(getattr(im, "n_frames", 1)))
    except MemoryError:
        raise
    except Exception:
        return 1


def _load_first_frame(im: Image.Image, target: int) -> None:
    if im.format in ("JPEG", "MPO"):
        # libjpeg decodes at 1/2..1/8 scale (DCT-domain). Keep the colour mode: decoding YCbCr
        # straight to Y ("L") is ~7% faster but moves some hashes by up to 8 bits from the
        # reference, which derives luma from libjpeg's RGB output.
        im.draft(im.mode, (target, target))
    im.load()


def _decode(
    data: bytes, fmt: str, limits: ImageSettings, start: float, target: int
) -> DecodedImage:
    plugin = _pillow_format(fmt)
    with Image.open(io.BytesIO(data), formats=[plugin]) as im:
        _check_pixels(im.size, limits)
        width, height = im.size
        if fmt == "JPEG":
            _check_jpeg_memory(im)

        _load_first_frame(im, target)
        orientation = _orientation(im)
        if orientation >= 5:
            width, height = height, width
        first = _orient(_frame_luma(im, target), orientation)
        frames = [first]
        previous = first

        frame_count = _frame_count(im)
        # JPEG: only the primary picture is shown; MPO extras (stereo pair, depth or gain map)
        # are not frames.
        last = 1 if fmt == "JPEG" else frame_count
        for index in range(1, last):
            if len(frames) >= limits.max_frames:
                break
            _check_deadline(start, limits, index)
            try:
                im.seek(index)
                _check_pixels(im.size, limits, f"frame {index}")
                im.load()
                luma = _orient(_frame_luma(im, target), orientation)
            except MemoryError:
                raise
            except Exception:
                # A later frame is broken or over a limit: keep the frames before it, which
                # decoded completely (viewers show them too); never decode this one.
                break
            if luma.shape == previous.shape and np.array_equal(luma, previous):
                continue
            frames.append(luma)
            previous = luma

    for frame in frames:
        frame.flags.writeable = False
    return DecodedImage(
        width=width,
        height=height,
        image_format=fmt,
        frame_count=frame_count,
        frames=tuple(frames),
    )


_TRUNCATION_HINTS = (
    "truncated",
    "broken data stream",
    "end of file",
    "not enough data",
    "premature end",
    "buffer is not large enough",
)


def decode(data: bytes, limits: ImageSettings) -> DecodedImage:
    """Decode attachment bytes into small luminance frames; SkipImage(reason, detail) on any
    failure or broken limit (see the module docstring for the reasons)."""
    start = time.monotonic()
    if len(data) > limits.max_bytes:
        raise SkipImage("too-large", f"{len(data)} bytes > {limits.max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        raise SkipImage("not-an-image", "no known image signature")
    if fmt not in _DECODABLE:
        raise SkipImage("unsupported-format", f"{fmt}: not decoded by mailfilter")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _decode(data, fmt, limits, start, WORKING_SHORT_SIDE)
    except SkipImage:
        raise
    except Image.DecompressionBombError as exc:
        raise SkipImage("too-many-pixels", str(exc)) from None
    except MemoryError:
        raise SkipImage("memory-limit", "out of memory while decoding") from None
    except RecursionError:
        raise SkipImage("corrupt", "nesting too deep") from None
    except EOFError as exc:
        raise SkipImage("truncated", str(exc) or "unexpected end of data") from None
    except Exception as exc:  # anything Pillow or a codec raises on malformed data
        text = f"{type(exc).__name__}: {exc}"
        if "out of memory" in str(exc).lower():  # a codec's own allocation failed
            raise SkipImage("memory-limit", text) from None
        if any(hint in str(exc).lower() for hint in _TRUNCATION_HINTS):
            raise SkipImage("truncated", text) from None
        raise SkipImage("corrupt", text) from None
