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
  Why 512: PDQ's Jarosz filter box-averages to 64 x 64 anyway, but its windows and sampling
  points are tied to the pixel grid. A reduced frame is therefore hashed as standing for the
  full-size image (`frame_sizes` holds that size; `pdq_from_luma(frame, full_size)` folds the
  full image's filter onto the reduced grid). Measured with bench/pdq_fidelity.py on 657
  real photos of quality >= 80 (bench/photos): distance to the reference (pdqhash on the
  full decode) median 0, p95 0, max 2; hashing the reduced frame as an image of its own gave
  p95 6, max 14 (draft alone 14, box reduction alone 18). With the fold, a working short side
  of 256 or 384 also stays within 4 bits on the large photos (512: 2); 512 is kept for the
  other consumers of the frames (border trimming, gridhist preview, scene comparison).
- Luminance Y = 0.299 R + 0.587 G + 0.114 B (PDQ's); alpha is composited over white, using
  premultiplied reduction so transparent pixels' hidden colours do not bleed in.
- EXIF orientation (JPEG, PNG, WebP, TIFF, ...) is applied to the small arrays, cheaply (the
  first frame's orientation, to every frame).
- Animations (GIF, APNG, WebP) and multi-page TIFF/HEIF: every frame is walked. A frame
  is kept (fingerprinted) when it is a new scene: its 32 x 32 grid of luma means and standard
  deviations differs from the last kept frame's in some cell, brightness and contrast aside
  (`_same_scene`), so a fade or a frame repeated does not use up the cap. At most
  `max_frames` frames are kept; past the cap the walk goes on, and a frame that is a near copy
  of any kept frame is covered by it. The walk stops at the first frame that is not covered,
  or when the frame budget (half of `deadline`, so the fingerprints of the kept frames still
  fit in it) is spent: the image is then `incomplete` = "frames-past-limit" ("examined N of M
  frames"), with the fingerprints of the frames kept. A frame whose image is under
  `min_dimension` on a shared canvas (GIF, APNG, WebP, AVIF) gives no perceptual hash at all,
  so such files are not walked.
- Icons (ICO): every entry of at least `min_dimension` is examined like a frame (a viewer
  shows the entry that fits; the largest may be a decoy). HEIF/AVIF: the sizes claimed in
  `ispe` boxes are checked against `max_pixels` before libheif sees the file.
- Errors: only `SkipImage` leaves `decode`. A single image that fails to decode is skipped
  ("corrupt", ...), except a truncated one ("truncated"): that is decoded again with Pillow's
  LOAD_TRUNCATED_IMAGES (the rows that decoded, the rest filled with one colour, which the
  trimmed fingerprint cuts away), as viewers show the top of a cut-off JPEG, and comes back
  with `incomplete` = "truncated". A later frame that is broken or over a limit ends the walk:
  the frames before it are kept and `incomplete` is that frame's reason.
- Colour management: an embedded ICC profile changes what viewers draw (a profile can even
  invert the picture). When it changes luma by more than a little, the kept frames are also
  rendered through it (LittleCMS, to sRGB) and appended to `frames` after the frames as
  stored, so both readings are fingerprinted; frames[0] stays the stored pixels (what
  reference PDQ tools hash). What a profile does is measured, not read from its name (a name
  can lie): its transform is applied to ramps and a colour grid once per profile (MD5) per
  process (~20 ms; then ~0.05 ms per image).

- Memory: a decoder that runs out of memory (the worker's address-space limit,
  `workers.memory_limit`) is `memory-limit`. libjpeg keeps every DCT coefficient of a
  progressive JPEG in memory whatever the scale it decodes at, and reports running out as a
  broken stream; so that need is worked out from the header and compared with what the limit
  leaves before decoding (a 100 MP progressive JPEG needs about 300 MB).

Reason codes (SkipImage): not-an-image, no-pixel-data (cut off or empty before any pixel
data: PNG without IDAT, GIF before its first image, JPEG without a scan), unsupported-format,
too-large, too-many-pixels, memory-limit, truncated, corrupt, unsupported-mode, deadline.
`incomplete` reasons (the image was fingerprinted in part): frames-past-limit, truncated, or
a later frame's skip reason.
"""

from __future__ import annotations

import hashlib
import io
import math
import resource
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageCms, ImageFile, features

from mailfilter.errors import SkipImage
from mailfilter.magic import image_format
from mailfilter.pixels import float_array, float_image
from mailfilter.settings import ImageSettings

__all__ = ["FRAMES_PAST_LIMIT", "TRUNCATED", "WORKING_SHORT_SIDE", "DecodedImage", "decode",
           "sniff_format"]

#: `DecodedImage.incomplete`: frames were left unexamined (the cap on kept frames, or the
#: frame budget). (The same codes as in mailfilter.extract.core, where reasons are listed.)
FRAMES_PAST_LIMIT = "frames-past-limit"
#: A skip reason, and `DecodedImage.incomplete` when the part that decoded was fingerprinted.
TRUNCATED = "truncated"

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
    # float32 luminance (0..255), reduced size: each kept frame as stored, then (when an
    # embedded ICC profile changes the picture) the kept frames as a colour-managed viewer
    # draws them
    frames: tuple[Luma, ...]
    # the full size (width, height) of each entry of `frames`; empty: all are width x height
    frame_sizes: tuple[tuple[int, int], ...] = ()
    examined: int = 1  # frames of the file that were decoded and compared
    # why part of the image was not examined (see the module docstring), or None; the
    # frames above still count
    incomplete: str | None = None
    detail: str = ""

    def full_size(self, index: int) -> tuple[int, int]:
        """The full size (width, height) frame `index` stands for."""
        if index < len(self.frame_sizes):
            return self.frame_sizes[index]
        return self.width, self.height


# --- sniffing ----------------------------------------------------------------------------

# Formats the decoder may hand to Pillow; other images (JPEG XL, PSD) are recognised by
# `mailfilter.magic` but refused here as unsupported. ICO: browsers and viewers show icons,
# and each entry of an icon is a picture of its own (walked like frames). JPEG 2000: when
# Pillow was built with OpenJPEG (macOS Preview and some PDF readers show it).
_DECODABLE = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", "AVIF", "ICO",
                        "JPEG2000", "PPM", "XBM", "PCX"})


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
    if fmt == "JPEG2000" and not features.check("jpg_2000"):
        raise SkipImage("unsupported-format", "JPEG 2000: this Pillow build has no OpenJPEG")
    if fmt == "HEIF":
        if _heif_available():
            return "HEIF"
        raise SkipImage("unsupported-format", "HEIF: pillow-heif (a dependency) is missing "
                        "or broken")
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
    return float_array(im)  # without np.asarray's copies: see mailfilter.pixels


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


# --- colour management -------------------------------------------------------------------

# ICC colour spaces (header bytes 16..20) -> the Pillow mode a transform reads
_ICC_MODES = {b"RGB ": "RGB", b"GRAY": "L", b"CMYK": "CMYK"}
# A profile whose rendering of the test colours stays within this many levels of them is
# sRGB for our purposes (LittleCMS's own sRGB round trip is within 1; compact and v4 sRGB
# profiles within 2).
_SRGB_TOLERANCE = 4
# A profile that moves the luma of no test colour by more than _ICC_MILD_MAX levels, and of
# all of them by under _ICC_MILD_MEAN on average, changes PDQ by a few bits at most: wide-gamut
# display profiles (a Mac "Display" profile: 20 and 1.2; PDQ of both readings 0-2 bits apart)
# get no second reading, which would double the fingerprint cost of every such photo.
_ICC_MILD_MAX = 24.0
_ICC_MILD_MEAN = 3.0
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
# Transforms (or None: no transform needed or possible) per (profile MD5, mode); a worker
# meets few distinct profiles, this bounds a hostile stream of them.
_ICC_CACHE_MAX = 64
_icc_cache: dict[tuple[str, str], ImageCms.ImageCmsTransform | None] = {}
_srgb_profile: ImageCms.ImageCmsProfile | None = None


def _srgb() -> ImageCms.ImageCmsProfile:
    global _srgb_profile
    if _srgb_profile is None:
        _srgb_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _srgb_profile


def _test_colours(mode: str) -> tuple[Image.Image, npt.NDArray[np.int16]]:
    """Ramps of every level per channel and a colour grid, in `mode` ("RGB" or "L"), and
    the RGB an sRGB profile gives back for them."""
    ramp = np.arange(256, dtype=np.uint8)
    if mode == "L":
        grey = ramp.reshape(1, 256)
        return Image.fromarray(grey, "L"), np.repeat(grey[..., None], 3, axis=2).astype(np.int16)
    zeros = np.zeros(256, np.uint8)
    ramps = [np.stack(c, axis=-1) for c in ((ramp, zeros, zeros), (zeros, ramp, zeros),
                                             (zeros, zeros, ramp), (ramp, ramp, ramp))]
    # the nodes of a 17-point LUT (the usual size of an ICC table), where a table can hide
    # a change between the ramps
    levels = np.linspace(0, 255, 17).round().astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    rows = np.concatenate([*ramps, grid])
    rows = np.concatenate([rows, np.zeros(((-len(rows)) % 256, 3), np.uint8)])
    rgb = rows.reshape(-1, 256, 3)
    return Image.fromarray(rgb, "RGB"), rgb.astype(np.int16)


def _profile_digest(profile: bytes) -> str:
    return hashlib.md5(profile, usedforsecurity=False).hexdigest()


def _icc_transform(profile: bytes, digest: str, mode: str) -> ImageCms.ImageCmsTransform | None:
    """A transform from `profile` to sRGB for pixels in `mode` ("RGB", "RGBA", "L" or
    "CMYK"), or None when the profile does not change what is drawn (it is sRGB) or changes
    luma too little to matter, does not fit the mode (viewers ignore it then) or cannot be
    read. CMYK is always transformed (Pillow's own CMYK to RGB is naive)."""
    key = (digest, mode)
    if key in _icc_cache:
        return _icc_cache[key]
    transform: ImageCms.ImageCmsTransform | None = None
    space = _ICC_MODES.get(profile[16:20])
    base = "RGB" if mode == "RGBA" else mode
    if space == base:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            out = "RGBA" if mode == "RGBA" else "RGB"
            transform = ImageCms.buildTransform(source, _srgb(), mode, out)
            if base != "CMYK":
                probe = transform if mode != "RGBA" else ImageCms.buildTransform(
                    source, _srgb(), base, "RGB")
                colours, expected = _test_colours(base)
                drawn = np.asarray(ImageCms.applyTransform(colours, probe), np.int16)
                change = np.abs((drawn - expected).astype(np.float32) @ _LUMA_WEIGHTS)
                if int(np.abs(drawn - expected).max()) <= _SRGB_TOLERANCE or (
                        float(change.max()) <= _ICC_MILD_MAX
                        and float(change.mean()) <= _ICC_MILD_MEAN):
                    transform = None
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            transform = None
    if len(_icc_cache) >= _ICC_CACHE_MAX:
        _icc_cache.clear()
    _icc_cache[key] = transform
    return transform


def _managed_luma(im: Image.Image, profile: bytes, digest: str, target: int) -> Luma | None:
    """The loaded current frame as a colour-managed viewer draws it (through `profile`, MD5
    `digest`, to sRGB), or None when the profile changes nothing or does not apply. The
    usual case (an sRGB profile) costs a dictionary look-up: nothing is converted first."""
    transparent = "transparency" in im.info
    mode = {"1": "L", "P": "RGBA" if transparent else "RGB", "PA": "RGBA"}.get(im.mode, im.mode)
    if mode in ("L", "RGB") and transparent:
        mode = "LA" if mode == "L" else "RGBA"
    if mode not in ("RGB", "RGBA", "L", "LA", "CMYK"):
        return None
    transform = _icc_transform(profile, digest, "L" if mode == "LA" else mode)
    if transform is None:
        return None
    if im.mode != mode:
        im = im.convert(mode)
    if mode == "LA":  # a grey profile with alpha: alpha composited by _frame_luma later
        grey, alpha = im.split()
        rgb = ImageCms.applyTransform(grey, transform)
        assert rgb is not None
        return _frame_luma(Image.merge("RGBA", (*rgb.split(), alpha)), target)
    # Without alpha, reduce first: a transform of the working-size frame costs a few ms
    # (of the full frame, up to 16x more), and PDQ cannot tell the difference.
    small = im if mode == "RGBA" and not _alpha_is_opaque(im) else _reduce(im, target)
    drawn = ImageCms.applyTransform(small, transform)
    assert drawn is not None
    return _frame_luma(drawn, target)


# --- scenes ------------------------------------------------------------------------------

# A frame of an animation is compared with the kept frames on a 32 x 32 grid of cells: the
# mean and the standard deviation of luma in each cell. Like PDQ, the comparison ignores
# brightness and contrast: both grids are taken relative to the grid's mean and spread (the
# standard deviation of the cell means), and a frame is the same scene when no cell moves by
# more than _SCENE_Z spreads, and the spreads are within _SCENE_SPREAD_RATIO of each other (so
# a nearly flat frame, which PDQ cannot hash, never covers the picture it fades into). A
# nearly flat frame (spread under _SCENE_FLAT levels) is compared in grey levels instead.
# A cell is 1/32 of each side: a picture dropped into a corner at a size PDQ could match
# moves at least one cell; the standard deviation catches one with the mean of what was
# there. Measured on generated photos: offsets and contrast changes stay under 0.03 (PDQ
# 0-4 bits apart), a 2% shift is 2.5-3.9 (PDQ 38-56 bits); per-frame palettes are 0.3-0.9
# (PDQ 8-44 bits) and so count as new scenes: they use up the cap rather than risk a miss.
_SCENE_GRID = 32
_SCENE_Z = 0.25
_SCENE_SPREAD_RATIO = 1.25
_SCENE_FLAT = 8.0
_SCENE_LEVELS = 6.0


@dataclass(frozen=True, slots=True)
class _Scene:
    shape: tuple[int, int]
    mean: npt.NDArray[np.float32]  # per cell
    std: npt.NDArray[np.float32]  # per cell
    spread: float  # standard deviation of `mean`


def _scene(luma: Luma) -> _Scene:
    size = (_SCENE_GRID, _SCENE_GRID)
    mean = float_array(float_image(luma).resize(size, Image.Resampling.BOX))
    square = float_array(float_image(luma * luma).resize(size, Image.Resampling.BOX))
    std = np.sqrt(np.maximum(square - mean * mean, 0.0))
    return _Scene((luma.shape[0], luma.shape[1]), mean, std, float(mean.std()))


def _same_scene(a: _Scene, b: _Scene) -> bool:
    # Frames of another size but the same shape are compared too (the entries of an icon,
    # pages at two resolutions), by their means only: detail within a cell, and so its
    # standard deviation, depends on the resolution.
    (ha, wa), (hb, wb) = a.shape, b.shape
    if abs(ha * wb - hb * wa) > 0.02 * ha * wb:
        return False
    texture = a.shape == b.shape
    if a.spread < _SCENE_FLAT or b.spread < _SCENE_FLAT:
        return bool(np.abs(a.mean - b.mean).max() <= _SCENE_LEVELS
                    and (not texture or np.abs(a.std - b.std).max() <= _SCENE_LEVELS))
    if max(a.spread, b.spread) > _SCENE_SPREAD_RATIO * min(a.spread, b.spread):
        return False
    za = (a.mean - a.mean.mean()) / a.spread
    zb = (b.mean - b.mean.mean()) / b.spread
    return bool(np.abs(za - zb).max() <= _SCENE_Z
                and (not texture or np.abs(a.std / a.spread - b.std / b.spread).max()
                     <= _SCENE_Z))


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


# Multi-frame files walk their frames within this share of `deadline`; the rest of it is
# left for fingerprinting the frames kept (and the first frame's decode, which comes first).
_FRAME_BUDGET_SHARE = 0.5
# The frames kept by one decode (as stored and colour-managed) hold at most this many bytes
# (a frame of the working size is 1-16 MB): past it the walk stops (frames-past-limit), far
# below the worker memory limit.
_MAX_KEPT_BYTES = 256 << 20
# Formats whose frames share one canvas: when it is under `min_dimension`, no frame can
# give a perceptual hash, so the frames are not walked. (TIFF and HEIF pages have sizes of
# their own.)
_CANVAS_FORMATS = frozenset({"GIF", "PNG", "WEBP", "AVIF"})
# Formats decoded a second time, as far as their data goes, when they turn out truncated.
_PARTIAL_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "TIFF"})


def _frame_count(im: Image.Image) -> int | None:
    """Frames in the file (GIF: found by walking the whole file); None when that walk fails
    on a broken later frame (the frames are then walked one by one up to it)."""
    try:
        return max(1, int(getattr(im, "n_frames", 1)))
    except MemoryError:
        raise
    except Exception:
        return None


def _load_first_frame(im: Image.Image, target: int) -> None:
    if im.format in ("JPEG", "MPO"):
        # libjpeg decodes at 1/2..1/8 scale (DCT-domain). Keep the colour mode: decoding YCbCr
        # straight to Y ("L") is ~7% faster but moves some hashes by up to 8 bits from the
        # reference, which derives luma from libjpeg's RGB output.
        im.draft(im.mode, (target, target))
    im.load()


def _load_truncated(im: Image.Image, target: int) -> None:
    """Load the first frame as far as its data goes (the rest of the canvas filled with one
    colour), as viewers show a cut-off image. Pillow's switch for that is process-global:
    it is on only for this one load, in a worker that runs one task at a time."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        _load_first_frame(im, target)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


@dataclass(slots=True)
class _Frames:
    """The frames kept so far by one decode, as stored and as colour-managed."""

    target: int
    orientation: int
    profile: bytes | None
    digest: str  # of the profile
    stored: list[Luma]
    sizes: list[tuple[int, int]]
    managed: list[Luma]
    managed_sizes: list[tuple[int, int]]

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.stored) + sum(f.nbytes for f in self.managed)

    def keep(self, im: Image.Image, luma: Luma,
             stored_size: tuple[int, int] | None = None) -> None:
        """`stored_size`: the frame's full size as stored, when `im` was decoded reduced
        (a JPEG draft: `im.size` is then the reduced size)."""
        w, h = stored_size or im.size
        size = (h, w) if self.orientation >= 5 else (w, h)
        self.stored.append(luma)
        self.sizes.append(size)
        if self.profile:
            try:
                drawn = _managed_luma(im, self.profile, self.digest, self.target)
            except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
                drawn = None  # a profile LittleCMS cannot apply: viewers ignore it too
            if drawn is not None:
                self.managed.append(_orient(drawn, self.orientation))
                self.managed_sizes.append(size)


def _walk_frames(im: Image.Image, frames: _Frames, frame_count: int | None,
                 limits: ImageSettings, start: float) -> tuple[int, str | None, str]:
    """Decode frames 1.. of `im` and keep each new scene (see the module docstring).
    Returns (frames examined, incomplete reason or None, detail)."""
    kept = [_scene(frames.stored[0])]
    last = kept[0]
    budget = limits.deadline * _FRAME_BUDGET_SHARE
    total = str(frame_count) if frame_count is not None else "more"
    index = 1
    while frame_count is None or index < frame_count:
        if time.monotonic() - start > budget:
            return index, FRAMES_PAST_LIMIT, (
                f"examined {index} of {total} frames: the frame budget of {budget:g}s "
                "was spent")
        try:
            im.seek(index)
            _check_pixels(im.size, limits, f"frame {index}")
            im.load()
            luma = _orient(_frame_luma(im, frames.target), frames.orientation)
        except MemoryError:
            raise
        except EOFError as exc:
            if frame_count is None:
                break  # the walk found the end
            skip = SkipImage(TRUNCATED, str(exc) or "unexpected end of data")
            return index, skip.reason, f"frame {index}: {skip.detail}; examined {index} " \
                f"of {total} frames"
        except Exception as exc:
            # The frames before it decoded completely (viewers show them too) and are kept;
            # this one is never fingerprinted in part, and what follows it is not reached.
            skip = exc if isinstance(exc, SkipImage) else _classify(exc)
            return index, skip.reason, f"frame {index}: {skip.detail}; examined {index} " \
                f"of {total} frames"
        scene = _scene(luma)
        if not _same_scene(scene, last):
            if len(frames.stored) < limits.max_frames:
                if frames.nbytes + luma.nbytes * (2 if frames.managed else 1) > _MAX_KEPT_BYTES:
                    return index, FRAMES_PAST_LIMIT, (
                        f"examined {index} of {total} frames: the frames kept reached "
                        f"{_MAX_KEPT_BYTES >> 20} MiB")
                frames.keep(im, luma)
                kept.append(scene)
                last = scene
            elif not any(_same_scene(scene, k) for k in kept):
                return index, FRAMES_PAST_LIMIT, (
                    f"examined {index} of {total} frames: more than {limits.max_frames} "
                    "distinct frames")
        index += 1
    return index, None, ""


def _walk_icon(im: Image.Image, frames: _Frames, limits: ImageSettings,
               start: float) -> tuple[int, str | None, str]:
    """The other entries of an icon (Pillow loads the largest): each a picture of its own,
    kept when it is a new scene and at least `min_dimension` (a smaller one cannot have a
    perceptual hash). Returns (entries examined, incomplete reason or None, detail)."""
    ico = getattr(im, "ico", None)
    if ico is None:
        return 1, None, ""
    sizes = sorted((s for s in ico.sizes() if s != im.size), key=lambda s: -s[0] * s[1])
    total = len(sizes) + 1
    kept = [_scene(frames.stored[0])]
    for index, size in enumerate(sizes, start=1):
        if min(size) < limits.min_dimension:
            continue
        if time.monotonic() - start > limits.deadline * _FRAME_BUDGET_SHARE:
            return index, FRAMES_PAST_LIMIT, f"examined {index} of {total} icon entries"
        try:
            _check_pixels(size, limits, f"icon entry {index}")
            entry = ico.getimage(size)
            entry.load()
            luma = _orient(_frame_luma(entry, frames.target), frames.orientation)
        except MemoryError:
            raise
        except Exception as exc:
            skip = exc if isinstance(exc, SkipImage) else _classify(exc)
            return index, skip.reason, f"icon entry {size[0]}x{size[1]}: {skip.detail}"
        scene = _scene(luma)
        if any(_same_scene(scene, k) for k in kept):
            continue
        if len(frames.stored) >= limits.max_frames:
            return index, FRAMES_PAST_LIMIT, (
                f"examined {index} of {total} icon entries: more than {limits.max_frames} "
                "distinct ones")
        frames.keep(entry, luma)
        kept.append(scene)
    return total, None, ""


def _check_heif_extents(data: bytes, limits: ImageSettings) -> None:
    """HEIF/AVIF: every image's size is in an `ispe` box (among the first few KB); libheif
    reads such boxes before Pillow sees a size, so a claimed size over the limit is refused
    here, before the file reaches it."""
    at = data.find(b"ispe", 0, 65536)
    while at >= 4 and at + 16 <= len(data):
        width, height = int.from_bytes(data[at + 8:at + 12]), int.from_bytes(data[at + 12:at + 16])
        _check_pixels((max(width, 1), max(height, 1)), limits)
        at = data.find(b"ispe", at + 4, 65536)


def _decode(data: bytes, fmt: str, limits: ImageSettings, start: float, target: int,
            truncated: bool = False) -> DecodedImage:
    """`truncated`: the second attempt at a truncated image: its first frame as far as it
    decodes, nothing more."""
    plugin = _pillow_format(fmt)
    if fmt in ("HEIF", "AVIF"):
        _check_heif_extents(data, limits)
    with Image.open(io.BytesIO(data), formats=[plugin]) as im:
        _check_pixels(im.size, limits)
        width, height = stored_size = im.size
        if fmt == "JPEG":
            _check_jpeg_memory(im)

        if truncated:
            _load_truncated(im, target)
        else:
            _load_first_frame(im, target)
        orientation = _orientation(im)
        if orientation >= 5:
            width, height = height, width
        profile = im.info.get("icc_profile")
        if not isinstance(profile, bytes) or not profile:
            profile = None
        frames = _Frames(target, orientation, profile,
                         _profile_digest(profile) if profile else "", [], [], [], [])
        frames.keep(im, _orient(_frame_luma(im, target), orientation), stored_size)

        # JPEG: only the primary picture is shown; MPO extras (stereo pair, depth or gain map)
        # are not frames.
        frame_count = 1 if fmt == "JPEG" or truncated else _frame_count(im)
        examined, incomplete, detail = 1, None, ""
        if fmt == "ICO" and not truncated:
            examined, incomplete, detail = _walk_icon(im, frames, limits, start)
            icon = getattr(im, "ico", None)  # (IcoImageFile's directory)
            frame_count = len(icon.sizes()) if icon is not None else 1
        elif frame_count != 1 and not (
            fmt in _CANVAS_FORMATS and min(width, height) < limits.min_dimension
        ):
            examined, incomplete, detail = _walk_frames(im, frames, frame_count, limits, start)
        if frame_count is None:
            frame_count = examined

    luma = (*frames.stored, *frames.managed)
    for frame in luma:
        frame.flags.writeable = False
    return DecodedImage(
        width=width,
        height=height,
        image_format=fmt,
        frame_count=frame_count,
        frames=luma,
        frame_sizes=(*frames.sizes, *frames.managed_sizes),
        examined=examined,
        incomplete=incomplete,
        detail=detail,
    )


_TRUNCATION_HINTS = (
    "truncated",
    "broken data stream",
    "end of file",
    "not enough data",
    "premature end",
    "buffer is not large enough",
)


def _classify(exc: BaseException) -> SkipImage:
    """The skip reason for what a decoder raised on malformed data or a broken limit."""
    if isinstance(exc, SkipImage):
        return exc
    if isinstance(exc, Image.DecompressionBombError):
        return SkipImage("too-many-pixels", str(exc))
    if isinstance(exc, MemoryError):
        return SkipImage("memory-limit", "out of memory while decoding")
    if isinstance(exc, RecursionError):
        return SkipImage("corrupt", "nesting too deep")
    if isinstance(exc, EOFError):
        return SkipImage(TRUNCATED, str(exc) or "unexpected end of data")
    text = f"{type(exc).__name__}: {exc}"
    if "out of memory" in str(exc).lower():  # a codec's own allocation failed
        return SkipImage("memory-limit", text)
    if any(hint in str(exc).lower() for hint in _TRUNCATION_HINTS):
        return SkipImage(TRUNCATED, text)
    return SkipImage("corrupt", text)


def _decode_or_skip(data: bytes, fmt: str, limits: ImageSettings, start: float,
                    truncated: bool) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _decode(data, fmt, limits, start, WORKING_SHORT_SIDE, truncated)
    except SkipImage:
        raise
    except Exception as exc:  # anything Pillow or a codec raises on malformed data
        raise _classify(exc) from None


#: The reason for an image that ends (or is empty) before any of its pixel data: a header
#: cut off in a fixture or in transit. Nothing of a picture is in it, so nothing is hidden:
#: it counts as looked at (a defect, like bytes with no image signature), not unscannable.
NO_PIXEL_DATA = "no-pixel-data"


def _no_pixel_data(data: bytes, fmt: str) -> bool:
    """Whether the image ends inside its headers, before its first pixel data: the chunks
    of a PNG before any IDAT (or one of zero area), a GIF before its first image, the
    marker segments of a JPEG before its first scan. Walked strictly: anything unexpected
    on the way (a damaged file, not a cut-off one) is not judged, and other formats are not
    judged either (their failures stay unscannable)."""
    size = len(data)
    if fmt == "PNG":
        if size >= 24 and (data[16:20] == b"\0\0\0\0" or data[20:24] == b"\0\0\0\0"):
            return True  # zero width or height
        pos = 8
        while pos + 8 <= size:
            kind = data[pos + 4 : pos + 8]
            if kind == b"IDAT" or not kind.isalpha():
                return False
            pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
        return True
    if fmt == "GIF":
        if size < 13:
            return True
        pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
        while pos < size:  # extension blocks before the first image descriptor
            if data[pos] == 0x2C:
                return pos + 11 >= size  # descriptor, code size, a first sub-block
            if data[pos] != 0x21:
                return False
            pos += 2
            while pos < size and data[pos]:
                pos += data[pos] + 1
            pos += 1
        return True
    if fmt == "JPEG":
        pos = 2
        while pos + 4 <= size:
            if data[pos] != 0xFF:
                return False
            marker = data[pos + 1]
            if marker == 0xFF:
                pos += 1  # fill byte
                continue
            if marker == 0xDA or not 0xC0 <= marker <= 0xFE or 0xD0 <= marker <= 0xD9:
                return False
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        return True
    return False


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
        return _decode_or_skip(data, fmt, limits, start, truncated=False)
    except SkipImage as exc:
        if exc.reason in (TRUNCATED, "corrupt") and _no_pixel_data(data, fmt):
            raise SkipImage(NO_PIXEL_DATA, f"{fmt}: {exc.detail}") from None
        if exc.reason != TRUNCATED or fmt not in _PARTIAL_FORMATS:
            raise
        cut = exc
    try:
        partial = _decode_or_skip(data, fmt, limits, start, truncated=True)
    except SkipImage:
        raise cut from None
    return replace(partial, incomplete=TRUNCATED, detail=cut.detail)
