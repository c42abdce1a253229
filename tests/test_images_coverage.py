"""Issue 15, the decode stage: nothing a viewer shows may pass unseen, and nothing left
unexamined may pass as clean.

- every frame of an animation or multi-page file is walked (the known photo as the 17th
  frame is found, or the image says `frames-past-limit`);
- a truncated image is fingerprinted as far as it decodes (`truncated`);
- HEIC/HEIF and AVIF are decoded by default, in the worker processes too;
- an embedded ICC profile is applied as a viewer applies it (one that inverts the picture);
- a part declared an image with no image signature is a defect, not unscannable.

All material is generated here (tests/factories.py): benign gradients and shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import struct
from collections.abc import Iterator

import numpy as np
import pytest
from factories import image_bytes, jpeg, message, message_bytes, photo_like
from PIL import Image, ImageCms, ImageFile, features

from mailfilter import images
from mailfilter.cli.scan import scan_record
from mailfilter.errors import SkipImage
from mailfilter.fingerprint import FingerprintParams, fingerprint_image
from mailfilter.hashing.pdq import hamming
from mailfilter.images import decode
from mailfilter.matching.index import HashIndex, IndexEntry
from mailfilter.matching.lookup import match_fingerprint
from mailfilter.model import AttachmentResult, ImageFingerprint, ScanResult, Verdict
from mailfilter.scanner import Scanner, verdict_of
from mailfilter.settings import ImageSettings, Settings, load_settings
from mailfilter.workers import WorkerPool

SETTINGS: Settings = load_settings(None, {}).settings
PARAMS = FingerprintParams.from_settings(SETTINGS)
THRESHOLD = SETTINGS.match.pdq_max_distance
PHOTO_SEED = 1515  # "the known photo"


# --- helpers -----------------------------------------------------------------------------


def params(**images_settings: object) -> FingerprintParams:
    return FingerprintParams(images=ImageSettings(**images_settings),
                             pdq_min_quality=SETTINGS.match.pdq_min_quality)


def reference_pdq(img: Image.Image) -> str:
    fp = fingerprint_image(image_bytes(img, "PNG"), PARAMS)
    assert fp.primary is not None and fp.primary.pdq is not None
    return fp.primary.pdq


def nearest(fp: ImageFingerprint, pdq: str) -> int:
    """The smallest distance from any frame (any reading, trimmed or not) to `pdq`."""
    return min((hamming(f.pdq, pdq) for f in fp.frames if f.pdq), default=256)


def verdict(fp: ImageFingerprint, *pdqs: str) -> Verdict:
    """The message verdict for one attachment against a list holding `pdqs`."""
    index = HashIndex.build([IndexEntry("known", "pdq", p, ()) for p in pdqs])
    matches = match_fingerprint(index, fp, SETTINGS.match)
    return verdict_of([AttachmentResult("2", "x", None, fp, matches)], ())


def animation(frames: list[Image.Image], fmt: str) -> bytes:
    first, rest = frames[0], frames[1:]
    if fmt == "GIF":  # (a palette per frame, made fast: Pillow's default takes ~0.15 s each)
        first, *rest = (f.quantize(256, method=Image.Quantize.FASTOCTREE,
                                   dither=Image.Dither.NONE) for f in frames)
        return image_bytes(first, "GIF", save_all=True, append_images=rest, duration=80,
                           disposal=1)
    if fmt == "WEBP":
        return image_bytes(first, "WEBP", save_all=True, append_images=rest, duration=80,
                           lossless=True)
    if fmt == "PNG":  # APNG
        return image_bytes(first, "PNG", save_all=True, append_images=rest, duration=80)
    assert fmt == "TIFF"
    return image_bytes(first, "TIFF", save_all=True, append_images=rest)


def distinct(n: int, size: tuple[int, int] = (160, 120)) -> list[Image.Image]:
    return [photo_like(500 + i, *size) for i in range(n)]


def fade(n: int, size: tuple[int, int] = (160, 120)) -> list[Image.Image]:
    """One picture getting brighter a level per frame: one scene, however many frames."""
    base = np.asarray(photo_like(400, *size), np.int16)
    return [Image.fromarray(np.clip(base + i, 0, 255).astype(np.uint8), "RGB")
            for i in range(n)]


# --- all the frames ----------------------------------------------------------------------


ANIMATED = ["GIF", "WEBP", "PNG", "TIFF"]


@pytest.mark.parametrize("fmt", ANIMATED)
def test_the_photo_after_many_frames_of_one_scene_is_matched(fmt: str) -> None:
    photo = photo_like(PHOTO_SEED, 160, 120)
    data = animation([*fade(24), photo], fmt)
    fp = fingerprint_image(data, PARAMS)
    assert fp.frame_count == 25
    assert fp.incomplete is None, fp.detail
    assert nearest(fp, reference_pdq(photo)) <= THRESHOLD
    assert verdict(fp, reference_pdq(photo)) is Verdict.MATCH


@pytest.mark.parametrize("fmt", ANIMATED)
def test_the_photo_past_the_frame_cap_is_never_clean(fmt: str) -> None:
    """The photo as the 17th distinct frame: past `max_frames` (16 here) it is not
    fingerprinted, and the image says so; the frames examined are fingerprinted and still
    match."""
    photo = photo_like(PHOTO_SEED, 160, 120)
    frames = distinct(16)
    data = animation([*frames, photo], fmt)
    fp = fingerprint_image(data, params(max_frames=16))
    assert fp.incomplete == "frames-past-limit"
    assert "examined 16 of 17 frames" in fp.detail
    assert len({f.frame for f in fp.frames}) == 16
    assert verdict(fp, reference_pdq(photo)) is Verdict.UNSCANNABLE
    # a match on a frame that was examined is a match
    assert verdict(fp, reference_pdq(frames[3])) is Verdict.MATCH
    # with the default cap (64) the photo is found
    more = fingerprint_image(data, PARAMS)
    assert more.incomplete is None
    assert verdict(more, reference_pdq(photo)) is Verdict.MATCH


def test_scenes_seen_before_are_covered_past_the_cap() -> None:
    """A loop of three scenes: past a cap of three, every frame is a near copy of one kept."""
    a, b, c = distinct(3)
    data = animation([a, b, c] * 6, "GIF")
    fp = fingerprint_image(data, params(max_frames=3))
    assert fp.incomplete is None, fp.detail
    assert len({f.frame for f in fp.frames}) == 3
    assert fingerprint_image(data, params(max_frames=2)).incomplete == "frames-past-limit"


def test_a_picture_dropped_into_a_corner_is_a_new_scene() -> None:
    canvas = Image.new("RGB", (400, 300), (128, 128, 128))
    inset = canvas.copy()
    inset.paste(photo_like(PHOTO_SEED, 60, 60), (330, 230))
    decoded = decode(animation([canvas, canvas, inset], "GIF"), ImageSettings())
    assert len(decoded.frames) == 2


def test_fingerprinting_stops_within_the_deadline_and_says_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The frames kept are fingerprinted within a share of the deadline: the rest are
    reported, never lost to the deadline (which would lose every frame's fingerprint)."""
    from mailfilter import fingerprint

    data = animation(distinct(6), "TIFF")
    monkeypatch.setattr(fingerprint, "FINGERPRINT_BUDGET_SHARE", 0.0)
    fp = fingerprint_image(data, PARAMS)
    assert fp.incomplete == "frames-past-limit"
    assert "fingerprinted 1 of 6 distinct frames" in fp.detail
    assert fp.primary is not None and fp.primary.pdq is not None


def test_frame_budget_stops_the_walk_and_says_so() -> None:
    data = animation(distinct(5), "GIF")
    fp = fingerprint_image(data, params(deadline=0))
    assert fp.incomplete == "frames-past-limit"
    assert "examined 1 of 5 frames" in fp.detail
    assert fp.primary is not None and fp.primary.pdq is not None


def test_a_broken_later_frame_is_reported_with_the_frames_before_it() -> None:
    first = photo_like(PHOTO_SEED, 160, 120)
    data = animation([first, photo_like(2, 160, 120)], "GIF")
    fp = fingerprint_image(data[: len(data) - 200], PARAMS)
    assert fp.incomplete in ("truncated", "corrupt")
    assert verdict(fp, reference_pdq(first)) is Verdict.MATCH
    assert verdict(fp, reference_pdq(photo_like(3, 160, 120))) is Verdict.UNSCANNABLE


def test_a_thumbnail_first_page_does_not_make_later_pages_too_small() -> None:
    photo = photo_like(PHOTO_SEED, 320, 240)
    data = animation([photo_like(7, 32, 24), photo], "TIFF")
    fp = fingerprint_image(data, PARAMS)
    assert fp.incomplete is None
    assert verdict(fp, reference_pdq(photo)) is Verdict.MATCH


def test_a_tiny_canvas_is_not_walked() -> None:
    """20,000 frames of 1 x 1: no frame can have a perceptual hash, so none is decoded
    past the first, and nothing was left unexamined."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = (b"\x21\xf9\x04\x00\x01\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
             + b"\x02\x02\x44\x01\x00")
    other = frame[:-3] + b"\x02\x4c\x01\x00"
    data = header + b"".join(frame if i % 2 else other for i in range(20000)) + b"\x3b"
    fp = fingerprint_image(data, PARAMS)
    assert fp.skipped is None and fp.incomplete is None
    assert fp.frame_count > 1


def test_a_single_frame_has_no_walk() -> None:
    decoded = decode(jpeg(5), ImageSettings())
    assert (decoded.frame_count, decoded.examined, decoded.incomplete) == (1, 1, None)
    assert len(decoded.frames) == 1


# --- truncated images --------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "keep"), [("JPEG", 0.98), ("JPEG-progressive", 0.5),
                                           ("PNG", 0.98)])
def test_a_truncated_image_matches_on_what_decodes(fmt: str, keep: float) -> None:
    photo = photo_like(PHOTO_SEED, 640, 480)
    if fmt == "JPEG-progressive":
        data = image_bytes(photo, "JPEG", quality=90, progressive=True)
    else:
        data = image_bytes(photo, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    fp = fingerprint_image(data[: int(len(data) * keep)], PARAMS)
    assert fp.skipped is None
    assert fp.incomplete == "truncated"
    assert verdict(fp, reference_pdq(photo)) is Verdict.MATCH
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # only ever on for that one load


def test_a_truncated_image_without_a_match_is_unscannable() -> None:
    photo = photo_like(PHOTO_SEED, 640, 480)
    data = image_bytes(photo, "JPEG", quality=90)
    fp = fingerprint_image(data[: len(data) // 6], PARAMS)
    assert fp.incomplete == "truncated" or fp.skipped in ("truncated", "corrupt")
    assert verdict(fp, reference_pdq(photo)) is Verdict.UNSCANNABLE


def test_an_image_without_pixel_data_is_looked_at_not_unscannable() -> None:
    """Cut off before its first scan: a defect (nothing of a picture is there); cut after
    some of it: truncated, unscannable unless it matches."""
    data = image_bytes(photo_like(PHOTO_SEED, 640, 480), "JPEG", quality=90)
    header = data[: data.index(b"\xff\xda")]
    fp = fingerprint_image(header, PARAMS)
    assert fp.skipped == "no-pixel-data"
    assert verdict(fp, reference_pdq(photo_like(PHOTO_SEED, 640, 480))) is Verdict.CLEAN


def test_a_complete_image_is_not_decoded_twice_or_marked() -> None:
    fp = fingerprint_image(jpeg(6), PARAMS)
    assert fp.incomplete is None and fp.skipped is None


# --- HEIC / HEIF / AVIF ------------------------------------------------------------------


def heic(img: Image.Image) -> bytes:
    pillow_heif = pytest.importorskip("pillow_heif")
    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, quality=90)
    return buf.getvalue()


def test_heic_is_decoded_and_matches_the_original() -> None:
    photo = photo_like(PHOTO_SEED, 320, 240)
    fp = fingerprint_image(heic(photo), PARAMS)
    assert fp.skipped is None, fp.detail
    assert fp.image_format == "HEIF"
    assert (fp.width, fp.height) == (320, 240)
    assert verdict(fp, reference_pdq(photo)) is Verdict.MATCH


def test_the_photo_as_the_second_image_of_a_heif_is_matched() -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    photo = photo_like(PHOTO_SEED, 320, 240)
    collection = pillow_heif.from_pillow(photo_like(5, 320, 240))
    collection.add_from_pillow(photo)
    buf = io.BytesIO()
    collection.save(buf, quality=90)
    fp = fingerprint_image(buf.getvalue(), PARAMS)
    assert (fp.frame_count, fp.incomplete) == (2, None)
    assert verdict(fp, reference_pdq(photo)) is Verdict.MATCH


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF codec")
def test_avif_is_decoded_and_matches_the_original() -> None:
    photo = photo_like(PHOTO_SEED, 640, 480)
    fp = fingerprint_image(image_bytes(photo, "AVIF", quality=90), PARAMS)
    assert fp.image_format == "AVIF"
    assert verdict(fp, reference_pdq(photo)) is Verdict.MATCH


def test_heic_in_a_worker_process() -> None:
    """The opener is registered where the decoding happens: a fresh worker."""
    photo = photo_like(PHOTO_SEED, 320, 240)
    with WorkerPool(processes=1, memory_limit=1024**3) as pool:
        [fp] = list(pool.map(functools.partial(fingerprint_image, params=PARAMS),
                             [heic(photo)], deadline=30))
    assert isinstance(fp, ImageFingerprint)
    assert fp.image_format == "HEIF" and fp.skipped is None
    assert verdict(fp, reference_pdq(photo)) is Verdict.MATCH


def test_a_heif_claiming_a_huge_size_is_refused_before_decoding() -> None:
    """Only the boxes a size check reads (ftyp, ispe): the claimed size is the reason."""
    ftyp = struct.pack(">I", 24) + b"ftypheic" + struct.pack(">I", 0) + b"mif1heic"
    ispe = struct.pack(">I", 20) + b"ispe" + b"\x00" * 4 + struct.pack(">II", 65535, 65535)
    assert fingerprint_image(ftyp + ispe, PARAMS).skipped == "too-many-pixels"


# --- more formats viewers show -----------------------------------------------------------


def test_every_entry_of_an_icon_is_examined() -> None:
    """An icon whose largest entry is a decoy and a smaller one the photo: a viewer picks
    the entry that fits, so every entry at least min_dimension is fingerprinted."""
    photo = photo_like(PHOTO_SEED, 128, 96)
    decoy = photo_like(8, 256, 192)
    buf = io.BytesIO()
    decoy.save(buf, "ICO", sizes=[(256, 192), (128, 96)], append_images=[photo])
    fp = fingerprint_image(buf.getvalue(), PARAMS)
    assert fp.image_format == "ICO" and fp.incomplete is None
    assert fp.frame_count == 2
    assert verdict(fp, reference_pdq(photo)) is Verdict.MATCH
    assert verdict(fp, reference_pdq(decoy)) is Verdict.MATCH


def test_an_icon_of_one_picture_in_many_sizes_is_one_scene() -> None:
    buf = io.BytesIO()
    photo_like(PHOTO_SEED, 256, 256).save(buf, "ICO", sizes=[(256, 256), (128, 128), (64, 64)])
    decoded = decode(buf.getvalue(), ImageSettings())
    assert (decoded.frame_count, len(decoded.frames)) == (3, 1)


@pytest.mark.skipif(not features.check("jpg_2000"), reason="this Pillow has no OpenJPEG")
def test_jpeg_2000_is_decoded_and_matches_the_original() -> None:
    photo = photo_like(PHOTO_SEED, 320, 240)
    fp = fingerprint_image(image_bytes(photo, "JPEG2000"), PARAMS)
    assert fp.image_format == "JPEG2000" and fp.skipped is None
    assert verdict(fp, reference_pdq(photo)) is Verdict.MATCH


# --- ICC profiles ------------------------------------------------------------------------


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def inverting_profile(description: str = "sRGB IEC61966-2.1", grey: bool = False) -> bytes:
    """A minimal ICC v2 RGB (or grey) display profile: sRGB's primaries (D50-adapted) and
    white point, and tone curves (`curv`, 256 entries) that are sRGB's curve backwards, so the
    stored value v is drawn as 255 - v. Named like the common sRGB profile: a name proves
    nothing."""
    table = np.round(_srgb_to_linear(1.0 - np.arange(256) / 255.0) * 65535).astype(">u2")
    curve = b"curv\0\0\0\0" + struct.pack(">I", 256) + table.tobytes()
    text = description.encode() + b"\0"
    desc = (b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + struct.pack(">II", 0, 0)
            + struct.pack(">HB", 0, 0) + b"\0" * 67)
    tags = [(b"desc", desc), (b"wtpt", _xyz(0.9642, 1.0, 0.8249))]
    if grey:
        tags.append((b"kTRC", curve))
    else:
        tags += [(b"rXYZ", _xyz(0.4361, 0.2225, 0.0139)), (b"gXYZ", _xyz(0.3851, 0.7169, 0.0971)),
                 (b"bXYZ", _xyz(0.1431, 0.0606, 0.7141)),
                 (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    tags.append((b"cprt", b"text\0\0\0\0none\0"))
    start = 128 + 4 + 12 * len(tags)
    directory, body = b"", b""
    for signature, data in tags:
        body += b"\0" * (-len(body) % 4)
        directory += signature + struct.pack(">II", start + len(body), len(data))
        body += data
    body += b"\0" * (-len(body) % 4)
    header = (struct.pack(">I", start + len(body)) + b"\0" * 4 + bytes([2, 0x10, 0, 0])
              + b"mntr" + (b"GRAY" if grey else b"RGB ") + b"XYZ "
              + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp"
              + b"\0" * 24 + b"\0" * 4 + _s15(0.9642) + _s15(1.0) + _s15(0.8249))
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + directory + body


def inverted(img: Image.Image) -> Image.Image:
    return Image.fromarray(255 - np.asarray(img.convert("RGB")), "RGB")


def test_the_inverting_profile_draws_the_original() -> None:
    """The profile built above does what a colour-managed viewer will do with it."""
    photo = photo_like(PHOTO_SEED, 64, 48)
    profile = ImageCms.ImageCmsProfile(io.BytesIO(inverting_profile()))
    drawn = ImageCms.profileToProfile(inverted(photo), profile, ImageCms.createProfile("sRGB"))
    assert drawn is not None
    assert np.abs(np.asarray(drawn, np.int16) - np.asarray(photo, np.int16)).max() <= 2


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_picture_inverted_back_by_its_profile_is_matched(fmt: str) -> None:
    photo = photo_like(PHOTO_SEED, 640, 480)
    data = image_bytes(inverted(photo), fmt, icc_profile=inverting_profile(),
                       **({"quality": 92} if fmt == "JPEG" else {}))
    fp = fingerprint_image(data, PARAMS)
    assert fp.primary is not None and fp.primary.pdq is not None
    assert hamming(fp.primary.pdq, reference_pdq(photo)) > THRESHOLD  # the stored pixels
    assert verdict(fp, reference_pdq(photo)) is Verdict.MATCH  # what a viewer draws
    # and the stored reading still counts too (viewers without colour management)
    assert verdict(fp, reference_pdq(inverted(photo))) is Verdict.MATCH


def test_a_grey_picture_inverted_back_by_its_profile_is_matched() -> None:
    photo = photo_like(PHOTO_SEED, 640, 480).convert("L")
    stored = Image.fromarray(255 - np.asarray(photo), "L")
    data = image_bytes(stored, "JPEG", quality=92, icc_profile=inverting_profile(grey=True))
    fp = fingerprint_image(data, PARAMS)
    assert verdict(fp, reference_pdq(photo.convert("RGB"))) is Verdict.MATCH


def test_an_srgb_profile_adds_no_reading() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = image_bytes(photo_like(9, 640, 480), "JPEG", quality=90, icc_profile=srgb)
    decoded = decode(data, ImageSettings())
    assert len(decoded.frames) == 1
    digest = images._profile_digest(srgb)
    assert images._icc_transform(srgb, digest, "RGB") is None  # measured as sRGB, remembered
    key = (hashlib.md5(srgb).hexdigest(), "RGB")
    assert key in images._icc_cache


def test_a_broken_profile_is_ignored() -> None:
    data = image_bytes(photo_like(9, 320, 240), "JPEG", quality=90,
                       icc_profile=inverting_profile()[:200])
    fp = fingerprint_image(data, PARAMS)
    assert fp.skipped is None and fp.incomplete is None
    assert len(fp.frames) >= 1


# --- through the scanner: records, defects ------------------------------------------------


@pytest.fixture(scope="module")
def scanner() -> Iterator[Scanner]:
    photo = photo_like(PHOTO_SEED, 160, 120)
    text = b"Dear customer, please find the invoice attached.\r\n" * 4
    index = HashIndex.build([
        IndexEntry("known", "pdq", reference_pdq(photo), ()),
        IndexEntry("known", "md5", hashlib.md5(text).hexdigest(), ()),
    ])
    settings = SETTINGS.model_copy(update={"images": ImageSettings(max_frames=16)})
    with WorkerPool(processes=1, memory_limit=1024**3) as pool:
        yield Scanner(settings, pool, lambda: index)


def scan(scanner: Scanner, *attachments: tuple[str, str, bytes]) -> ScanResult:
    raw = message_bytes(message(attachments=list(attachments)))
    return asyncio.run(scanner.scan(raw, "test"))


def test_frames_past_the_limit_are_in_the_records(scanner: Scanner) -> None:
    data = animation([*distinct(16), photo_like(PHOTO_SEED, 160, 120)], "GIF")
    result = scan(scanner, ("anim.gif", "image/gif", data))
    assert result.verdict is Verdict.UNSCANNABLE
    [unscannable] = result.unscannable
    assert (unscannable.mime_path, unscannable.reason) == ("2", "frames-past-limit")
    assert "examined 16 of 17 frames" in unscannable.detail
    record = scan_record(result)
    assert record["attachments"][0]["incomplete"] == "frames-past-limit"
    assert record["unscannable"][0]["reason"] == "frames-past-limit"


def test_a_declared_image_that_is_text_is_a_defect_not_unscannable(scanner: Scanner) -> None:
    result = scan(scanner, ("photo.jpg", "image/jpeg", b"Just some words, no picture.\r\n"))
    assert result.verdict is Verdict.CLEAN
    assert "declared-image-not-an-image at 2" in result.defects
    assert result.attachments[0].fingerprint.skipped == "not-an-image"  # exact hashes only


def test_an_empty_declared_image_is_a_defect(scanner: Scanner) -> None:
    result = scan(scanner, ("empty.png", "image/png", b""))
    assert result.verdict is Verdict.CLEAN
    assert any(d.startswith("declared-image-not-an-image") for d in result.defects)


def test_a_declared_image_that_is_not_one_is_still_exact_matched(scanner: Scanner) -> None:
    text = b"Dear customer, please find the invoice attached.\r\n" * 4
    result = scan(scanner, ("scan.png", "image/png", text))
    assert result.verdict is Verdict.MATCH
    assert result.attachments[0].matches[0].algorithm == "md5"


def test_a_broken_image_with_a_signature_stays_unscannable(scanner: Scanner) -> None:
    broken = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(range(256)) * 8
    result = scan(scanner, ("b.jpg", "image/jpeg", broken))
    assert result.verdict is Verdict.UNSCANNABLE
    assert result.attachments[0].fingerprint.skipped in ("corrupt", "truncated")
    assert not result.defects or not any("declared-image" in d for d in result.defects)


# --- hostile bytes -----------------------------------------------------------------------


def _mutants(data: bytes, seed: int, count: int = 60) -> Iterator[bytes]:
    rng = np.random.default_rng(seed)
    for i in range(count):
        buf = bytearray(data)
        if i % 3 == 0:
            yield bytes(buf[: int(rng.integers(0, len(buf)))])
            continue
        for _ in range(int(rng.integers(1, 8))):
            buf[int(rng.integers(0, len(buf)))] = int(rng.integers(0, 256))
        yield bytes(buf)


def _sample(kind: str) -> bytes:
    photo = photo_like(11, 96, 72)
    if kind == "ico":
        buf = io.BytesIO()
        photo.save(buf, "ICO", sizes=[(96, 72), (64, 48)])
        return buf.getvalue()
    if kind == "jpeg-icc":
        return image_bytes(photo, "JPEG", quality=90, icc_profile=inverting_profile())
    if kind == "heic":
        return heic(photo)
    return image_bytes(photo, "JPEG2000")


@pytest.mark.parametrize("kind", ["ico", "jpeg-icc", "heic", "jpeg2000"])
def test_mutated_new_formats_only_ever_skip(kind: str) -> None:
    """Cut and flipped bytes of the formats and paths added here: decode returns or raises
    SkipImage, nothing else."""
    if kind == "jpeg2000" and not features.check("jpg_2000"):
        pytest.skip("this Pillow has no OpenJPEG")
    for data in _mutants(_sample(kind), len(kind)):
        with contextlib.suppress(SkipImage):
            decode(data, ImageSettings())



# --- older formats file viewers open (Netpbm, XBM, PCX) ----------------------------------


@pytest.mark.parametrize("fmt, mode", [("PPM", "RGB"), ("PPM", "L"), ("PPM", "1"),
                                       ("PCX", "RGB"), ("XBM", "1")])
def test_old_viewer_formats_are_fingerprinted(fmt: str, mode: str) -> None:
    """The jwz test mailbox carries PBM/PGM/PPM and XBM attachments that Python's email and
    ripmime both find and viewers open: they are images, not 'not-an-image'."""
    img = photo_like(21, 320, 240)
    reference = fingerprint_image(image_bytes(img, "PNG"), PARAMS).primary
    fp = fingerprint_image(image_bytes(img.convert(mode), fmt), PARAMS)
    assert fp.skipped is None and fp.image_format == fmt
    if mode != "1":  # a bilevel copy is too far from the photo for any perceptual hash
        assert reference is not None and reference.pdq is not None
        assert fp.primary is not None and fp.primary.pdq is not None
        assert hamming(fp.primary.pdq, reference.pdq) <= 31


@pytest.mark.parametrize("text", [b"P3 is a paper size\n", b"P6 12 mm\n", b"#define X 1\n",
                                  b"\x0a\x05hello world, not a picture"])
def test_text_that_starts_like_an_old_format_is_not_an_image(text: bytes) -> None:
    assert images.sniff_format(text) is None


def test_netpbm_with_a_comment_after_the_magic_is_an_image() -> None:
    img = photo_like(22, 64, 48).convert("1")
    data = image_bytes(img, "PPM")
    commented = data[:3] + b"# created by 'xv /chalk/homes/moore/src' from a scan\n" + data[3:]
    assert images.sniff_format(commented) == "PPM"
    assert fingerprint_image(commented, PARAMS).skipped is None
