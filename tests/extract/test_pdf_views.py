"""PDFs as viewers draw them (issue 15, item 5): a known photo hidden in a PDF the way a
viewer still shows it is matched.

Each construction is built here, byte by byte, around a benign generated photo. The
strongest check is used throughout: the fingerprints of what extraction yields are compared
with the photo's PDQ, the way the matcher does. Where poppler's `pdftoppm` is installed it
renders each construction as a reference, so a test can also show that the construction is
real (a viewer shows the photo) rather than a PDF nobody can open.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import extract_corpus as ec
import numpy as np
import pytest
from factories import photo_like
from PIL import Image, ImageOps

from mailfilter.extract import extract
from mailfilter.fingerprint import FingerprintParams, fingerprint_image
from mailfilter.hashing.pdq import hamming, pdq_from_luma
from mailfilter.model import Extraction
from mailfilter.settings import ExtractSettings, Settings

LIMITS = ExtractSettings()
PARAMS = FingerprintParams.from_settings(Settings())
MAX_DISTANCE = Settings().match.pdq_max_distance

# The photo: 640 x 480 px, drawn at 1 pt per pixel with a margin on a larger page, so the
# region the renderer finds is not simply the whole page.
W, H = 640, 480
PAGE_W, PAGE_H = 800, 640
X0, Y0 = 80, 100
PHOTO_IMG = photo_like(151, W, H)


def jpeg_of(img: Image.Image, quality: int = 92) -> bytes:
    out = io.BytesIO()
    img.convert("L" if img.mode == "L" else "RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


PHOTO = jpeg_of(PHOTO_IMG)


def luma(img: Image.Image) -> np.ndarray:
    rgb = np.asarray(img.convert("RGB"), np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


PHOTO_PDQ = pdq_from_luma(luma(Image.open(io.BytesIO(PHOTO)))).hash


# --- building PDFs --------------------------------------------------------------------


@dataclass
class Doc:
    """A one-page PDF: page content, named XObjects and extra objects, numbered in order."""

    content: bytes
    xobjects: dict[str, bytes] = field(default_factory=dict)  # name -> object body
    extra: list[bytes] = field(default_factory=list)  # objects 4+len(xobjects)+... (refs)
    page_size: tuple[int, int] = (PAGE_W, PAGE_H)

    def objects(self) -> list[bytes]:
        names = list(self.xobjects)
        first_x = 5  # 1 catalog, 2 pages, 3 page, 4 content
        res = " ".join(f"/{n} {first_x + i} 0 R" for i, n in enumerate(names))
        w, h = self.page_size
        return [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w} {h}] "
            f"/Resources << /XObject << {res} >> >> /Contents 4 0 R >>".encode(),
            ec.pdf_stream("", self.content),
            *self.xobjects.values(),
            *self.extra,
        ]

    def bytes(self) -> bytes:
        return ec.pdf(self.objects())


def image_object(img: Image.Image, extra: str = "", fmt: str = "dct") -> bytes:
    """An image XObject holding `img` as a JPEG (dct) or Flate-compressed samples (flate)."""
    w, h = img.size
    if fmt == "dct":
        data, filt = jpeg_of(img), "/DCTDecode"
    else:
        gray = img.mode == "L"
        data, filt = zlib.compress(img.convert("L" if gray else "RGB").tobytes()), "/FlateDecode"
    cs = "/DeviceGray" if img.mode == "L" else "/DeviceRGB"
    return ec.pdf_stream(
        f"/Type /XObject /Subtype /Image /Width {w} /Height {h} /ColorSpace {cs} "
        f"/BitsPerComponent 8 /Filter {filt} {extra}",
        data,
    )


def draw(name: str, x: float, y: float, w: float, h: float) -> bytes:
    return f"q {w} 0 0 {h} {x} {y} cm /{name} Do Q\n".encode()


def plain_photo_pdf() -> bytes:
    return Doc(draw("Im1", X0, Y0, W, H), {"Im1": image_object(PHOTO_IMG)}).bytes()


# --- looking at what extraction yields ------------------------------------------------


def attached(data: bytes, name: str = "d.pdf", limits: ExtractSettings = LIMITS) -> Extraction:
    raw = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"see attached\n"),
                                            ec.attachment("application/pdf", data, name)],
                                  "pb"))
    return extract(raw, limits)


def best_distance(ex: Extraction) -> int:
    """The smallest PDQ distance from the photo to anything extraction yields (any frame,
    trimmed or not, any of the 8 rotations and flips, as the matcher looks)."""
    best = 256
    for att in ex.attachments:
        fp = fingerprint_image(att.data, PARAMS)
        for frame in fp.frames:
            for h in frame.pdq_dihedral or ((frame.pdq,) if frame.pdq else ()):
                best = min(best, hamming(h, PHOTO_PDQ))
    return best


def matched(ex: Extraction) -> bool:
    return best_distance(ex) <= MAX_DISTANCE


def reasons(ex: Extraction) -> set[tuple[str, str]]:
    return {(u.mime_path, u.reason) for u in ex.unscannable}


# --- the reference: poppler's pdftoppm ------------------------------------------------


def reference_distance(pdf: bytes, tmp_path: Path, box: tuple[int, int, int, int] | None = None
                       ) -> int:
    """PDQ distance from the photo to what pdftoppm draws of page 1 (at 72 dpi, 1 px per pt),
    cropped to `box` (left, top, right, bottom in pixels; default: where the photo sits), in
    the nearest of the 8 orientations (as the matcher looks)."""
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is not installed; CI installs it")
    src = tmp_path / "ref.pdf"
    src.write_bytes(pdf)
    # -cropbox: what viewers show (pdftoppm draws the whole MediaBox by default). PPM, not
    # -png: the same rendering, ten times faster than poppler's PNG writer.
    subprocess.run(["pdftoppm", "-r", "72", "-cropbox", "-f", "1", "-l", "1", "-singlefile",
                    str(src), str(tmp_path / "ref")], check=True, capture_output=True,
                   timeout=60)
    page = Image.open(tmp_path / "ref.ppm")
    left, top = X0, PAGE_H - Y0 - H
    crop = page.crop(box or (left, top, left + W, top + H))
    return min(hamming(h, PHOTO_PDQ) for h in pdq_from_luma(luma(crop)).dihedral)


# --- the constructions ----------------------------------------------------------------


def broken_startxref() -> bytes:
    """startxref points into the middle of the file: readers must find objects by scanning."""
    pdf = plain_photo_pdf()
    head, _, _ = pdf.rpartition(b"startxref\n")
    return head + b"startxref\n12345\n%%EOF\n"


def no_xref_at_all() -> bytes:
    """No xref table and no startxref: `N 0 obj ... endobj` in sequence, then a trailer."""
    pdf = plain_photo_pdf()
    return pdf[: pdf.rindex(b"xref\n0 ")] + b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"


def object_missing_from_xref() -> bytes:
    """The xref table stops before the image object (and /Size says so): only a scan of the
    file finds it."""
    pdf = plain_photo_pdf()
    start = pdf.rindex(b"xref\n0 ")
    table = pdf[start:].split(b"\n")
    # table: "xref", "0 6", free entry, entries 1..5, "trailer", ...
    kept = [b"xref", b"0 5", *table[2:7]]
    trailer = b"trailer\n<< /Size 5 /Root 1 0 R >>\n"
    tail = f"startxref\n{start}\n%%EOF\n".encode()
    return pdf[:start] + b"\n".join(kept) + b"\n" + trailer + tail


def shadowed_object() -> bytes:
    """Two objects numbered 5: the xref points at the blank one, the photo is the other."""
    blank = image_object(Image.new("RGB", (W, H), (255, 255, 255)))
    doc = Doc(draw("Im1", X0, Y0, W, H), {"Im1": blank})
    pdf = doc.bytes()
    cut = pdf.index(b"5 0 obj")
    return pdf[:cut] + b"5 0 obj\n" + image_object(PHOTO_IMG) + b"\nendobj\n" + b" " * 0 + pdf[cut:]


def no_endstream() -> bytes:
    """The image stream has a wrong /Length and no `endstream`: the next object follows."""
    body = image_object(PHOTO_IMG)
    body = body.replace(b"\nendstream", b"")
    body = body.replace(f"/Length {len(PHOTO)}".encode(), b"/Length 99")
    doc = Doc(draw("Im1", X0, Y0, W, H), {"Im1": body}, extra=[b"<< /Unrelated true >>"])
    return doc.bytes()


def ascii85_without_end_marker() -> bytes:
    data = base64.a85encode(PHOTO, wrapcol=76)  # no `~>` (adobe=False)
    body = ec.pdf_stream(
        f"/Type /XObject /Subtype /Image /Width {W} /Height {H} /ColorSpace /DeviceRGB "
        "/BitsPerComponent 8 /Filter [/ASCII85Decode /DCTDecode]",
        data,
    )
    return Doc(draw("Im1", X0, Y0, W, H), {"Im1": body}).bytes()


def ascii85_with_junk_after_the_end_marker() -> bytes:
    data = base64.a85encode(PHOTO, wrapcol=76) + b"~>\x00junk after the end"
    return photo_stream_pdf("[/ASCII85Decode /DCTDecode]", data)


def ascii_hex_without_end_marker() -> bytes:
    return photo_stream_pdf("[/ASCIIHexDecode /DCTDecode]", PHOTO.hex().encode())


def flate_with_trailing_garbage() -> bytes:
    return photo_stream_pdf("/FlateDecode", zlib.compress(PHOTO_IMG.tobytes()) + b"garbage" * 9)


def photo_stream_pdf(filters: str, data: bytes) -> bytes:
    body = ec.pdf_stream(
        f"/Type /XObject /Subtype /Image /Width {W} /Height {H} /ColorSpace /DeviceRGB "
        f"/BitsPerComponent 8 /Filter {filters}", data)
    return Doc(draw("Im1", X0, Y0, W, H), {"Im1": body}).bytes()


def encrypted(algorithm: str, user: str = "", owner: str = "owner") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(plain_photo_pdf())))
    writer.encrypt(user_password=user, owner_password=owner, algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def inline_image() -> bytes:
    """The photo as an inline image in the content stream (BI ... ID ... EI): no XObject."""
    content = (f"q {W} 0 0 {H} {X0} {Y0} cm\nBI /W {W} /H {H} /CS /RGB /BPC 8 /F /DCT\nID\n"
               .encode() + PHOTO + b"\nEI\nQ\n")
    return Doc(content).bytes()


def decode_inverted() -> bytes:
    """The stored samples are the photo's negative; `/Decode [1 0 1 0 1 0]` turns them back."""
    negative = ImageOps.invert(PHOTO_IMG)
    body = image_object(negative, "/Decode [1 0 1 0 1 0]")
    return Doc(draw("Im1", X0, Y0, W, H), {"Im1": body}).bytes()


def clipped_to_half() -> bytes:
    """The stored image is twice as wide (the photo beside another picture); a clip path
    shows only the photo."""
    wide = Image.new("RGB", (2 * W, H))
    wide.paste(photo_like(152, W, H), (0, 0))
    wide.paste(PHOTO_IMG, (W, 0))
    content = (f"q {X0} {Y0} {W} {H} re W n\n".encode()
               + draw("Im1", X0 - W, Y0, 2 * W, H) + b"Q\n")
    return Doc(content, {"Im1": image_object(wide)}).bytes()


def tiles(nx: int = 3, ny: int = 2) -> bytes:
    """The photo cut into nx x ny tiles, each its own XObject, drawn edge to edge."""
    xobjects: dict[str, bytes] = {}
    content = b""
    tw, th = W // nx, H // ny
    for j in range(ny):
        for i in range(nx):
            tile = PHOTO_IMG.crop((i * tw, j * th, (i + 1) * tw, (j + 1) * th))
            name = f"T{j}{i}"
            xobjects[name] = image_object(tile)
            content += draw(name, X0 + i * tw, Y0 + H - (j + 1) * th, tw, th)
    return Doc(content, xobjects).bytes()


def soft_mask(black_side: int | None = None) -> bytes:
    """A black image whose /SMask (alpha) is the photo's negative: on a white page the viewer
    shows the photo in grey; neither stored image is the photo. `black_side`: the black
    image is that many pixels square (viewers draw it at the finer mask's resolution)."""
    black = Image.new("RGB", (black_side, black_side) if black_side else (W, H))
    alpha = ImageOps.invert(PHOTO_IMG.convert("L"))
    doc = Doc(draw("Im1", X0, Y0, W, H))
    smask_num = 5 + 1  # right after the one XObject
    doc.xobjects["Im1"] = image_object(black, f"/SMask {smask_num} 0 R", fmt="flate")
    doc.extra.append(image_object(alpha))
    return doc.bytes()


def in_a_form(clip_inside: bool = False) -> bytes:
    """The photo drawn inside a form XObject that the page scales to half and moves; a clip
    inside the form hides the wide image's other half."""
    if clip_inside:
        wide = Image.new("RGB", (2 * W, H))
        wide.paste(PHOTO_IMG, (0, 0))
        wide.paste(photo_like(153, W, H), (W, 0))
        img, inner = wide, f"q 0 0 {W} {H} re W n {2 * W} 0 0 {H} 0 0 cm /Im1 Do Q".encode()
    else:
        img, inner = PHOTO_IMG, f"q {W} 0 0 {H} 0 0 cm /Im1 Do Q".encode()
    form = ec.pdf_stream(
        f"/Type /XObject /Subtype /Form /BBox [0 0 {2 * W} {H}] "
        "/Resources << /XObject << /Im1 6 0 R >> >>", inner)
    content = f"q 0.5 0 0 0.5 {X0} {Y0} cm /F1 Do Q\n".encode()
    return Doc(content, {"F1": form}, extra=[image_object(img)]).bytes()


def graphics_state_soft_mask_objects() -> list[bytes]:
    """Objects 1-8: a plain black image (5, nothing to undo in its own dictionary) drawn
    through the graphics state's (6) luminosity soft mask, whose group (7) paints the
    photo's negative (8): the viewer shows the photo."""
    group = ec.pdf_stream(
        f"/Type /XObject /Subtype /Form /BBox [0 0 {PAGE_W} {PAGE_H}] "
        "/Group << /S /Transparency /CS /DeviceGray >> /Resources << /XObject << /Neg 8 0 R >> >>",
        draw("Neg", X0, Y0, W, H))
    black = image_object(Image.new("RGB", (W, H)), fmt="flate")
    objects = Doc(b"q /GS1 gs " + draw("Im1", X0, Y0, W, H) + b"Q\n", {"Im1": black}).objects()
    objects[2] = objects[2].replace(b"/Resources <<", b"/Resources << /ExtGState << /GS1 6 0 R >>")
    objects += [b"<< /Type /ExtGState /SMask << /Type /Mask /S /Luminosity /G 7 0 R >> >>",
                group,
                image_object(ImageOps.invert(PHOTO_IMG.convert("L")))]
    return objects


def graphics_state_soft_mask() -> bytes:
    return ec.pdf(graphics_state_soft_mask_objects())


def graphics_state_soft_mask_on_a_form() -> bytes:
    """The same, with the image inside a form XObject (9) and the soft mask set where the
    form is drawn: the image's own state has none."""
    objects = graphics_state_soft_mask_objects()
    objects[2] = objects[2].replace(b"/Im1 5 0 R", b"/Fm1 9 0 R")
    objects[3] = ec.pdf_stream("", b"q /GS1 gs /Fm1 Do Q\n")
    objects.append(ec.pdf_stream(f"/Type /XObject /Subtype /Form /BBox [0 0 {PAGE_W} {PAGE_H}] "
                                 "/Resources << /XObject << /Im1 5 0 R >> >>",
                                 draw("Im1", X0, Y0, W, H)))
    return ec.pdf(objects)


def blended_negative() -> bytes:
    """The photo's negative stored plainly, drawn in Difference blend mode over white."""
    content = (f"1 1 1 rg {X0} {Y0} {W} {H} re f q /GS1 gs ".encode()
               + draw("Im1", X0, Y0, W, H) + b"Q\n")
    objects = Doc(content, {"Im1": image_object(ImageOps.invert(PHOTO_IMG))}).objects()
    objects[2] = objects[2].replace(b"/Resources <<", b"/Resources << /ExtGState << /GS1 6 0 R >>")
    objects.append(b"<< /Type /ExtGState /BM /Difference >>")
    return ec.pdf(objects)


def pattern_fill() -> bytes:
    """The photo as the cell of a tiling pattern (stored as its negative with /Decode)
    that fills a rectangle: no image is drawn on the page itself."""
    cell = ec.pdf_stream(
        f"/Type /Pattern /PatternType 1 /PaintType 1 /TilingType 1 /BBox [0 0 {W} {H}] "
        f"/XStep {W} /YStep {H} /Matrix [1 0 0 1 {X0} {Y0}] "
        "/Resources << /XObject << /Im1 7 0 R >> >>", draw("Im1", 0, 0, W, H))
    content = f"/Pattern cs /P1 scn {X0} {Y0} {W} {H} re f\n".encode()
    objects = Doc(content).objects()
    objects[2] = objects[2].replace(b"/Resources <<", b"/Resources << /Pattern << /P1 6 0 R >>")
    objects += [b"<< >>", cell,
                image_object(ImageOps.invert(PHOTO_IMG), "/Decode [1 0 1 0 1 0]")]
    return ec.pdf(objects)


def in_an_annotation(subtype: str) -> bytes:
    """The photo shown only by an annotation's appearance stream, stored as its negative
    with a /Decode array; a Widget here belongs to no form (poppler draws it anyway)."""
    appearance = ec.pdf_stream(
        f"/Type /XObject /Subtype /Form /BBox [0 0 {W} {H}] "
        "/Resources << /XObject << /Im1 7 0 R >> >>", f"q {W} 0 0 {H} 0 0 cm /Im1 Do Q".encode())
    objects = Doc(b"BT ET\n").objects()
    objects[2] = objects[2].replace(b"/Contents", b"/Annots [5 0 R] /Contents")
    objects += [
        f"<< /Type /Annot /Subtype /{subtype} /Rect [{X0} {Y0} {X0 + W} {Y0 + H}] /F 4 "
        "/AP << /N 6 0 R >> >>".encode(),
        appearance,
        image_object(ImageOps.invert(PHOTO_IMG), "/Decode [1 0 1 0 1 0]"),
    ]
    return ec.pdf(objects)


def rotated_and_cropped() -> bytes:
    """A page turned by /Rotate 90 whose /CropBox starts away from the origin."""
    doc = Doc(draw("Im1", X0, Y0, W, H), {"Im1": image_object(PHOTO_IMG)})
    objects = doc.objects()
    objects[2] = objects[2].replace(b"/MediaBox", b"/Rotate 90 /CropBox [40 60 760 620] "
                                    b"/MediaBox")
    return ec.pdf(objects)




# --- the cases --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    build: Callable[[], bytes]
    # The stored objects hold the photo's JPEG byte for byte (found without rendering).
    stored: bool
    # Where pdftoppm draws the photo (pixels, left top right bottom); None: not drawn.
    shown: tuple[int, int, int, int] | None = (X0, PAGE_H - Y0 - H, X0 + W, PAGE_H - Y0)


CASES: dict[str, Case] = {
    "plain": Case(plain_photo_pdf, stored=True),
    "broken-startxref": Case(broken_startxref, stored=True),
    "no-xref": Case(no_xref_at_all, stored=True),
    "object-missing-from-xref": Case(object_missing_from_xref, stored=True),
    "shadowed-object": Case(shadowed_object, stored=True, shown=None),
    "no-endstream": Case(no_endstream, stored=True),
    "ascii85-without-end-marker": Case(ascii85_without_end_marker, stored=True),
    "ascii85-junk-after-end-marker": Case(ascii85_with_junk_after_the_end_marker, stored=True),
    "ascii-hex-without-end-marker": Case(ascii_hex_without_end_marker, stored=True),
    "aes128-empty-user-password": Case(lambda: encrypted("AES-128"), stored=True),
    "aes256-empty-user-password": Case(lambda: encrypted("AES-256"), stored=True),
    "rc4-empty-user-password": Case(lambda: encrypted("RC4-128"), stored=True),
    "rotated-cropped-page": Case(rotated_and_cropped, stored=True,
                                 shown=(40, 40, 40 + H, 40 + W)),
    "form-scaled": Case(in_a_form, stored=True,
                        shown=(X0, PAGE_H - Y0 - H // 2, X0 + W // 2, PAGE_H - Y0)),
    "inline-image": Case(inline_image, stored=False),
    "decode-inverted": Case(decode_inverted, stored=False),
    "clipped-to-half": Case(clipped_to_half, stored=False),
    "clipped-inside-a-form": Case(lambda: in_a_form(clip_inside=True), stored=False,
                                  shown=(X0, PAGE_H - Y0 - H // 2, X0 + W // 2, PAGE_H - Y0)),
    "tiles": Case(tiles, stored=False),
    "stamp-annotation": Case(lambda: in_an_annotation("Stamp"), stored=False),
    "widget-annotation": Case(lambda: in_an_annotation("Widget"), stored=False),
    "soft-mask": Case(soft_mask, stored=False),
    "soft-mask-finer-than-the-image": Case(lambda: soft_mask(8), stored=False),
    "graphics-state-soft-mask": Case(graphics_state_soft_mask, stored=False),
    "graphics-state-soft-mask-on-a-form": Case(graphics_state_soft_mask_on_a_form,
                                               stored=False),
    "negative-in-difference-blend-mode": Case(blended_negative, stored=False),
    "tiling-pattern": Case(pattern_fill, stored=False),
}
VIEWS = [name for name, case in CASES.items() if not case.stored]
SHOWN = [name for name, case in CASES.items() if case.shown is not None]
NO_RENDERING = ExtractSettings(pdf_render_max_pages=0)


@pytest.mark.parametrize("name", SHOWN)
def test_the_reference_viewer_shows_the_photo(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    assert reference_distance(case.build(), tmp_path, case.shown) <= MAX_DISTANCE


@pytest.mark.parametrize("name", list(CASES))
def test_the_photo_is_matched(name: str) -> None:
    ex = attached(CASES[name].build())
    assert ex.unscannable == ()
    assert matched(ex), best_distance(ex)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.stored])
def test_stored_objects_hold_the_photo_byte_for_byte(name: str) -> None:
    """Without rendering, the objects read (found by scanning where the table misses them,
    decoded tolerantly, decrypted) include the photo's JPEG exactly: MD5 lists match."""
    ex = attached(CASES[name].build(), limits=NO_RENDERING)
    assert ec.sha(PHOTO) in {ec.sha(a.data) for a in ex.attachments}
    assert ex.unscannable == ()


@pytest.mark.parametrize("name", VIEWS)
def test_only_the_rendering_shows_what_the_viewer_shows(name: str) -> None:
    """The stored objects alone do not match (the construction is a real trick); the
    rendered regions do."""
    pdf = CASES[name].build()
    assert not matched(attached(pdf, limits=NO_RENDERING))
    regions = [a for a in attached(pdf).attachments if "/page-1-region-" in a.mime_path]
    assert regions and all(a.content_type == "image/png" for a in regions)
    assert regions[0].mime_path == "2/d.pdf/page-1-region-1.png"
    assert regions[0].containers == ("application/pdf",)
    assert any(matched(Extraction(attachments=(a,))) for a in regions)


# --- limits and failures: never a silent partial scan -----------------------------------


def pages_pdf(with_photo: list[bool], extra_image: bytes | None = None) -> bytes:
    """A PDF of len(with_photo) pages; each page draws the photo (shared XObject, stored
    as its negative with a /Decode array, so only a rendering shows it) or only text.
    `extra_image`: an image XObject body drawn instead."""
    n = len(with_photo)
    image_num = 3 + 2 * n
    kids = " ".join(f"{3 + i} 0 R" for i in range(n))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode()]
    for i in range(n):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_W} {PAGE_H}] "
            f"/Resources << /XObject << /Im1 {image_num} 0 R >> /Font << /F1 {image_num + 1} 0 R"
            f" >> >> /Contents {3 + n + i} 0 R >>".encode())
    for i, photo in enumerate(with_photo, 1):
        # The page number is written over the photo: each page's rendering differs.
        text = f"BT /F1 12 Tf {X0 + 20} {Y0 + 20} Td (Page {i}) Tj ET\n".encode()
        objects.append(ec.pdf_stream("", (draw("Im1", X0, Y0, W, H) if photo else b"") + text))
    objects.append(extra_image or image_object(ImageOps.invert(PHOTO_IMG),
                                               "/Decode [1 0 1 0 1 0]"))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    return ec.pdf(objects)


def region_paths(ex: Extraction) -> list[str]:
    return [a.mime_path for a in ex.attachments if "-region-" in a.mime_path]


def test_pages_past_the_limit_are_reported() -> None:
    ex = attached(pages_pdf([True, True, True]), limits=ExtractSettings(pdf_render_max_pages=2))
    assert region_paths(ex) == ["2/d.pdf/page-1-region-1.png", "2/d.pdf/page-2-region-1.png"]
    assert reasons(ex) == {("2/d.pdf", "pages-past-limit")}
    assert "pages 3-3 of 3" in ex.unscannable[0].detail


def test_pages_without_images_do_not_count() -> None:
    ex = attached(pages_pdf([False, False, True, False]),
                  limits=ExtractSettings(pdf_render_max_pages=1))
    assert region_paths(ex) == ["2/d.pdf/page-3-region-1.png"]
    assert ex.unscannable == ()


def test_render_deadline_is_reported() -> None:
    ex = attached(pages_pdf([True, True]), limits=ExtractSettings(pdf_render_deadline=0))
    assert region_paths(ex) == []
    assert reasons(ex) == {("2/d.pdf", "pages-past-limit")}
    assert "deadline" in ex.unscannable[0].detail


def test_render_pixel_budget_is_reported() -> None:
    limits = ExtractSettings(pdf_render_max_pixels=W * H + 1000)
    ex = attached(pages_pdf([True, True]), limits=limits)
    assert region_paths(ex) == ["2/d.pdf/page-1-region-1.png"]
    assert reasons(ex) == {("2/d.pdf", "pages-past-limit")}
    assert "pixels" in ex.unscannable[0].detail


def test_regions_are_bounded_by_max_side() -> None:
    ex = attached(decode_inverted(), limits=ExtractSettings(pdf_render_max_side=320))
    region = next(a for a in ex.attachments if "-region-" in a.mime_path)
    img = Image.open(io.BytesIO(region.data))
    assert max(img.size) <= 320 + 1
    assert matched(Extraction(attachments=(region,)))  # PDQ holds at a third of the size


def test_bilevel_only_pages_are_not_rendered() -> None:
    """Scanned pages and stencils (1 bit per pixel) are left out, as the stored-object pass
    leaves them out: no region, nothing unscannable."""
    bits = PHOTO_IMG.convert("1")
    mask = ec.pdf_stream(f"/Type /XObject /Subtype /Image /Width {W} /Height {H} "
                         "/ImageMask true /BitsPerComponent 1 /Filter /FlateDecode",
                         zlib.compress(bits.tobytes()))
    ex = attached(pages_pdf([True], extra_image=mask))
    assert region_paths(ex) == []
    assert ex.unscannable == ()


def test_a_password_protected_pdf_is_encrypted_archive_and_not_rendered() -> None:
    ex = attached(encrypted("AES-256", user="secret"))
    assert reasons(ex) == {("2/d.pdf", "encrypted-archive")}
    assert ex.attachments == ()


def test_aes_without_cryptography_is_unsupported_but_still_rendered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pypdf needs cryptography for AES (DependencyError): that is not a password, and
    PDFium (which has its own AES) still shows the page."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    def no_aes(self: object, password: str) -> None:
        raise DependencyError("cryptography is required for AES algorithm")

    monkeypatch.setattr(PdfReader, "decrypt", no_aes)
    ex = attached(encrypted("AES-128"))
    assert reasons(ex) == {("2/d.pdf", "unsupported-archive")}
    assert matched(ex)


def test_a_pdf_cut_inside_its_objects_is_looked_at_byte_by_byte() -> None:
    """Cut inside the content stream, before the image object: neither pypdf nor PDFium
    (nor poppler) can show a page, and the picture is not in the bytes: a defect, nothing
    unscannable (test_pdf_unreadable.py has the cases that stay corrupt-archive)."""
    ex = attached(plain_photo_pdf()[:400])
    assert reasons(ex) == set()
    assert any(d.startswith("pdf-unreadable") for d in ex.defects), ex.defects


@pytest.mark.parametrize("cut", [-200, 40_000])
def test_a_pdf_cut_off_before_its_trailer_is_rendered(cut: int) -> None:
    """A file cut short (a size limit in transit), before its table and trailer or inside
    the image: PDFium opens it with a trailer found for it (MuPDF repairs such files by
    itself; poppler and PDFium alone refuse them)."""
    pdf = decode_inverted()[:cut]
    ex = attached(pdf)
    assert ex.unscannable == ()
    assert region_paths(ex) == ["2/d.pdf/page-1-region-1.png"]
    if cut < 0:
        assert matched(ex)


def test_photo_on_a_later_page_is_named_after_it() -> None:
    ex = attached(pages_pdf([False, True]))
    assert region_paths(ex) == ["2/d.pdf/page-2-region-1.png"]
    assert matched(ex)


def test_photo_over_a_background_is_seen_alone() -> None:
    """A photo laid over a full-page background picture: the union of the two is the whole
    page, so the photo's own region is rendered too."""
    background = image_object(photo_like(154, 80, 64))
    content = draw("Bg", 0, 0, PAGE_W, PAGE_H) + draw("Im1", X0, Y0, W, H)
    inverted = image_object(ImageOps.invert(PHOTO_IMG), "/Decode [1 0 1 0 1 0]")
    ex = attached(Doc(content, {"Bg": background, "Im1": inverted}).bytes())
    assert not matched(attached(Doc(content, {"Bg": background, "Im1": inverted}).bytes(),
                                limits=NO_RENDERING))
    assert matched(ex)


# --- end to end -------------------------------------------------------------------------


def test_scan_matches_the_photo_in_pdfs_viewers_show(tmp_path: Path) -> None:
    """`mailfilter scan` with the photo's PDQ on a list: each trick is a match, in a real
    scan (worker processes, the decode stage, the matcher)."""
    import json
    import os
    import sys

    env = {**os.environ, "MAILFILTER_IMAGES__DEADLINE": "30"}  # a loaded CI machine

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mailfilter", *args], capture_output=True,
                              text=True, timeout=180, env=env)

    pdq = fingerprint_image(PHOTO, PARAMS).frames[0].pdq  # what `mailfilter hash` prints
    hashes = tmp_path / "list.hma"
    hashes.write_text(f"pdq {pdq}\n")
    names = ["inline-image", "decode-inverted", "clipped-to-half", "tiles", "soft-mask",
             "no-endstream"]
    for name in names:
        (tmp_path / f"{name}.eml").write_bytes(ec.message(ec.multipart("mixed", [
            ec.part("text/plain", b"see attached\n"),
            ec.attachment("application/pdf", CASES[name].build(), f"{name}.pdf")], "pb")))
    out = cli("scan", "--json", "--hashes", str(hashes),
              *(str(tmp_path / f"{name}.eml") for name in names))
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["verdict"] for r in records] == ["match"] * len(names), out.stderr


# --- what need not be rendered again -----------------------------------------------------


def test_a_plain_photo_drawn_whole_is_not_rendered_again() -> None:
    """The stored JPEG is what every viewer shows: its fingerprint is enough."""
    ex = attached(plain_photo_pdf())
    assert [a.mime_path for a in ex.attachments] == ["2/d.pdf/image-5.jpg"]


@pytest.mark.parametrize("over", [
    b"BT /F1 48 Tf 100 300 Td (over the photo) Tj ET\n",
    b"q /GS1 gs 1 1 1 rg 0 0 800 640 re f Q\n",  # a white page in Difference blend mode
    draw("Im2", X0 + 100, Y0 + 100, 64, 48),
])
def test_a_plain_photo_with_something_painted_over_it_is_rendered(over: bytes) -> None:
    content = draw("Im1", X0, Y0, W, H) + over
    doc = Doc(content, {"Im1": image_object(PHOTO_IMG),
                        "Im2": image_object(photo_like(155, 64, 48))})
    objects = doc.objects()
    objects[2] = objects[2].replace(
        b"/Resources <<", b"/Resources << /Font << /F1 7 0 R >> /ExtGState << /GS1 8 0 R >>")
    objects += [b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
                b"<< /Type /ExtGState /BM /Difference >>"]
    ex = attached(ec.pdf(objects))
    assert "2/d.pdf/page-1-region-1.png" in region_paths(ex)
    assert matched(ex)


def test_an_inverted_view_by_blend_mode_is_matched(tmp_path: Path) -> None:
    """The photo's negative stored plainly, and a white rectangle painted over it in
    Difference blend mode: viewers show the photo."""
    content = (draw("Im1", X0, Y0, W, H)
               + f"q /GS1 gs 1 1 1 rg {X0} {Y0} {W} {H} re f Q\n".encode())
    doc = Doc(content, {"Im1": image_object(ImageOps.invert(PHOTO_IMG))})
    objects = doc.objects()
    objects[2] = objects[2].replace(b"/Resources <<", b"/Resources << /ExtGState << /GS1 6 0 R >>")
    objects.append(b"<< /Type /ExtGState /BM /Difference >>")
    pdf = ec.pdf(objects)
    assert reference_distance(pdf, tmp_path) <= MAX_DISTANCE
    assert not matched(attached(pdf, limits=NO_RENDERING))
    assert matched(attached(pdf))


def test_an_annotation_that_inverts_a_plain_negative_is_matched(tmp_path: Path) -> None:
    """The photo's negative stored plainly (nothing to undo in its dictionary), and an
    annotation whose appearance paints white over it in Difference blend mode: viewers
    show the photo; the flattened annotation is seen painted over the image."""
    appearance = ec.pdf_stream(
        f"/Type /XObject /Subtype /Form /BBox [0 0 {W} {H}] "
        "/Resources << /ExtGState << /GS1 8 0 R >> >>",
        f"q /GS1 gs 1 1 1 rg 0 0 {W} {H} re f Q".encode())
    doc = Doc(draw("Im1", X0, Y0, W, H), {"Im1": image_object(ImageOps.invert(PHOTO_IMG))})
    objects = doc.objects()
    objects[2] = objects[2].replace(b"/Contents", b"/Annots [6 0 R] /Contents")
    objects += [
        f"<< /Type /Annot /Subtype /Stamp /Rect [{X0} {Y0} {X0 + W} {Y0 + H}] /F 4 "
        "/AP << /N 7 0 R >> >>".encode(),
        appearance,
        b"<< /Type /ExtGState /BM /Difference >>",
    ]
    pdf = ec.pdf(objects)
    assert reference_distance(pdf, tmp_path) <= MAX_DISTANCE
    assert not matched(attached(pdf, limits=NO_RENDERING))
    ex = attached(pdf)
    assert "2/d.pdf/page-1-region-1.png" in region_paths(ex)
    assert matched(ex)


def test_an_image_too_large_to_render_is_reported() -> None:
    """An image declaring 20000 x 20000 pixels (400 MP) with /Decode (so not plain): PDFium
    would decode it whole to draw it; it is left out of the rendering and reported."""
    body = ec.pdf_stream(
        "/Type /XObject /Subtype /Image /Width 20000 /Height 20000 /ColorSpace /DeviceGray "
        "/BitsPerComponent 8 /Decode [1 0] /Filter /FlateDecode", zlib.compress(b"\0" * 4096))
    ex = attached(Doc(draw("Im1", X0, Y0, W, H), {"Im1": body}).bytes())
    assert ("2/d.pdf/page-1", "pages-past-limit") in reasons(ex)
    assert region_paths(ex) == []


def test_a_pdf_stub_without_objects_is_a_defect() -> None:
    """A file cut down to its header and trailer (seen in real test fixtures) shows nothing:
    PDFium refuses it, and that is not worth an unscannable verdict."""
    for stub in (b"%PDF-1.4\nstartxref\n53610\n%%EOF\n", b"%PDF-1.7\n" + b"\x00garbage" * 50):
        ex = attached(stub)
        assert ex.unscannable == ()
        assert "pdf-without-pages at 2/d.pdf" in ex.defects


def test_the_same_rendering_is_passed_on_once() -> None:
    """Two pages drawing the same picture the same way: one region."""
    pdf = pages_pdf([True, True])  # (the page number written over the photo differs)
    content = draw("Im1", X0, Y0, W, H)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >>"]
    for _ in range(2):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_W} {PAGE_H}] "
                       "/Resources << /XObject << /Im1 6 0 R >> >> /Contents 5 0 R >>".encode())
    objects += [ec.pdf_stream("", content),
                image_object(ImageOps.invert(PHOTO_IMG), "/Decode [1 0 1 0 1 0]")]
    assert len(region_paths(attached(pdf))) == 2
    assert region_paths(attached(ec.pdf(objects))) == ["2/d.pdf/page-1-region-1.png"]


def test_an_ocr_layer_over_a_scanned_page_does_not_force_a_rendering() -> None:
    """Invisible text (render mode 3) over a plain photo paints nothing: not rendered."""
    content = draw("Im1", X0, Y0, W, H) + b"BT 3 Tr /F1 24 Tf 100 300 Td (scanned words) Tj ET\n"
    doc = Doc(content, {"Im1": image_object(PHOTO_IMG)})
    objects = doc.objects()
    objects[2] = objects[2].replace(b"/Resources <<", b"/Resources << /Font << /F1 6 0 R >>")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    ex = attached(ec.pdf(objects))
    assert region_paths(ex) == []
    assert matched(ex)


def test_a_page_with_a_1_mp_photo_renders_quickly() -> None:
    """The cost per page: open, walk, render 1024 x 768 px, grey PNG (about 0.1 s on an
    idle core; the bound is loose for loaded CI machines)."""
    import time

    from mailfilter.extract import pdf_render
    from mailfilter.extract.core import Context, PayloadNode

    big = photo_like(156, 1155, 866)  # 1.0 MP
    pdf = Doc(draw("Im1", 0, 0, 1155, 866),
              {"Im1": image_object(ImageOps.invert(big), "/Decode [1 0 1 0 1 0]")},
              page_size=(1155, 866)).bytes()
    node = PayloadNode("d.pdf", (), pdf, "d.pdf", "application/pdf")
    started = time.perf_counter()
    out = list(pdf_render.regions(Context(LIMITS), node))
    assert time.perf_counter() - started < 3.0
    assert [Image.open(io.BytesIO(o.data)).size for o in out] == [(1024, 768)]


def test_a_tricked_photo_edge_to_edge_with_another_picture_is_seen_alone() -> None:
    """Two pictures side by side (one region together): the photo, stored as its negative
    with /Decode, is also rendered alone; the plain neighbour is not (its stored copy is
    what viewers show)."""
    decoy = image_object(photo_like(157, 64, H))
    photo = image_object(ImageOps.invert(PHOTO_IMG), "/Decode [1 0 1 0 1 0]")
    content = draw("Im1", X0 + W, Y0, 64, H) + draw("Im2", X0, Y0, W, H)
    ex = attached(Doc(content, {"Im1": decoy, "Im2": photo}).bytes())
    assert region_paths(ex) == ["2/d.pdf/page-1-region-1.png", "2/d.pdf/page-1-region-2.png"]
    assert matched(ex)


def test_pypdf_decrypts_with_cryptography() -> None:
    """AES needs a crypto provider: the cryptography package is a dependency, and pypdf
    must be using it (pypdf's fallback without one reads RC4 only)."""
    from pypdf._crypt_providers import crypt_provider

    assert crypt_provider[0] == "cryptography"


def test_a_long_text_document_with_a_photo_on_its_last_page() -> None:
    """600 pages of text are walked (not rendered) quickly; the photo on the last page is
    found, and nothing is reported unscannable."""
    ex = attached(pages_pdf([False] * 600 + [True]))
    assert region_paths(ex) == ["2/d.pdf/page-601-region-1.png"]
    assert ex.unscannable == ()


def test_a_plain_twin_does_not_hide_a_decode_inverted_image() -> None:
    """The photo's negative stored twice with the same bytes: once plainly (drawn tiny),
    once with /Decode (drawn large, showing the photo). PDFium tells only the bytes of what
    is drawn, so a plain twin must not make the inverted one look plain."""
    negative = ImageOps.invert(PHOTO_IMG)
    content = draw("Im1", 10, 10, 32, 24) + draw("Im2", X0, Y0, W, H)
    doc = Doc(content, {"Im1": image_object(negative),
                        "Im2": image_object(negative, "/Decode [1 0 1 0 1 0]")})
    ex = attached(doc.bytes())
    assert region_paths(ex)
    assert matched(ex)


def test_a_plain_twin_does_not_hide_an_inverted_inline_image() -> None:
    """The same with an inline image (no object of its own for the stored pass to see)."""
    negative = jpeg_of(ImageOps.invert(PHOTO_IMG))
    content = (draw("Im1", 10, 10, 32, 24)
               + f"q {W} 0 0 {H} {X0} {Y0} cm\nBI /W {W} /H {H} /CS /RGB /BPC 8 /F /DCT "
                 "/D [1 0 1 0 1 0]\nID\n".encode() + negative + b"\nEI\nQ\n")
    body = ec.pdf_stream(f"/Type /XObject /Subtype /Image /Width {W} /Height {H} "
                         "/ColorSpace /DeviceRGB /BitsPerComponent 8 /Filter /DCTDecode",
                         negative)
    ex = attached(Doc(content, {"Im1": body}).bytes())
    assert matched(ex)


# --- polyglots: what unarchivers find in a PDF's bytes ----------------------------------


def _decoy_pdf() -> bytes:
    return Doc(draw("Im1", X0, Y0, W, H), {"Im1": image_object(photo_like(158, W, H))}).bytes()


@pytest.mark.parametrize("glued", ["zip-after", "7z-after", "zip-in-a-stream"])
def test_an_archive_in_a_pdfs_bytes_is_opened(glued: str) -> None:
    """A PDF that viewers show as a decoy, whose bytes also hold an archive with the photo
    that bsdtar or 7z open (a zip by its directory at the end of the file, a 7z by its
    signature after %%EOF)."""
    if glued == "zip-after":
        data = _decoy_pdf() + ec.zip_bytes({"photo.jpg": PHOTO})
    elif glued == "7z-after":
        data = _decoy_pdf() + ec.sevenzip_bytes({"photo.jpg": PHOTO})
    else:
        unused = ec.pdf_stream("/Type /XObject /Subtype /Form /BBox [0 0 1 1]",
                               ec.zip_bytes({"photo.jpg": PHOTO}, zipfile.ZIP_STORED))
        data = Doc(draw("Im1", X0, Y0, W, H), {"Im1": image_object(photo_like(158, W, H)),
                                                "Unused": unused}).bytes()
    ex = attached(data)
    assert ec.sha(PHOTO) in {ec.sha(a.data) for a in ex.attachments}


# --- pictures drawn with paths (no image object) ----------------------------------------


def mosaic_content(cols: int, rows: int, x0: float = X0, y0: float = Y0) -> bytes:
    """The photo as cols x rows filled rectangles, one per pixel of a downscaled copy, over
    the photo's place on the page (a hair larger, as generators draw them, so no seams)."""
    small = np.asarray(PHOTO_IMG.resize((cols, rows)), np.uint8)
    cw, ch = W / cols, H / rows
    ops = []
    for r in range(rows):
        y = y0 + H - (r + 1) * ch
        for c in range(cols):
            red, green, blue = (int(v) for v in small[r, c])
            ops.append(f"{red / 255:.3f} {green / 255:.3f} {blue / 255:.3f} rg "
                       f"{x0 + c * cw:.2f} {y:.2f} {cw + 0.05:.2f} {ch + 0.05:.2f} re f")
    return "\n".join(ops).encode() + b"\n"


def posterised_content(levels: int, cols: int = 160, rows: int = 120) -> bytes:
    """The photo's luma in `levels` greys, each grey one path of many rectangles (one
    subpath per cell of a cols x rows grid): a few large paths of many segments."""
    grey = np.asarray(PHOTO_IMG.convert("L").resize((cols, rows)), np.float32) / 255
    level = np.minimum((grey * levels).astype(int), levels - 1)
    cw, ch = W / cols, H / rows
    ops = []
    for k in range(levels):
        ops.append(f"{(k + 0.5) / levels:.3f} g")
        for r, c in zip(*np.nonzero(level == k), strict=True):
            ops.append(f"{X0 + c * cw:.2f} {Y0 + H - (r + 1) * ch:.2f} "
                       f"{cw + 0.05:.2f} {ch + 0.05:.2f} re")
        ops.append("f")
    return "\n".join(ops).encode() + b"\n"


def in_form(content: bytes) -> Doc:
    """`content` inside a Form XObject, drawn by the page."""
    form = ec.pdf_stream(f"/Type /XObject /Subtype /Form /BBox [0 0 {PAGE_W} {PAGE_H}]",
                         content)
    return Doc(b"q /Fm1 Do Q\n", {"Fm1": form})


@pytest.mark.parametrize("drawing", ["mosaic-64x48", "mosaic-24x18", "posterised-8",
                                     "mosaic-in-a-form"])
def test_a_picture_drawn_with_paths_is_rendered_and_matched(drawing: str,
                                                            tmp_path: Path) -> None:
    """No image object at all: the photo drawn as a mosaic of filled rectangles (down to
    24 x 18, the coarsest that PDQ still matches), as a few paths of many segments (one per
    grey), or as a mosaic inside a form. pdftoppm shows the photo; so does the region."""
    if drawing == "posterised-8":
        doc = Doc(posterised_content(8))
    elif drawing == "mosaic-in-a-form":
        doc = in_form(mosaic_content(64, 48))
    else:
        cols, rows = (int(v) for v in drawing.split("-")[1].split("x"))
        doc = Doc(mosaic_content(cols, rows))
    pdf = doc.bytes()
    assert reference_distance(pdf, tmp_path) <= MAX_DISTANCE
    ex = attached(pdf)
    assert region_paths(ex) == ["2/d.pdf/page-1-region-1.png"]
    region = Image.open(io.BytesIO(next(a.data for a in ex.attachments
                                        if "-region-" in a.mime_path)))
    # The region is where the photo is drawn, at 2 px per point within max_side.
    assert abs(region.size[0] / region.size[1] - W / H) < 0.02
    assert matched(ex)
    assert ex.unscannable == ()


def text_pdf(pages: int, lines: int = 50) -> bytes:
    """`pages` pages of plain text (Helvetica, 50 lines a page), no picture."""
    n = pages
    kids = " ".join(f"{3 + i} 0 R" for i in range(n))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode()]
    font = 3 + 2 * n
    for i in range(n):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << "
            f"/F1 {font} 0 R >> >> /Contents {3 + n + i} 0 R >>".encode())
    for i in range(n):
        text = b"".join(
            f"BT /F1 11 Tf 50 {740 - 13 * j} Td (Page {i + 1} line {j + 1}: the quick brown fox "
            f"jumps over the lazy dog, again and again.) Tj ET\n".encode() for j in range(lines))
        # A rule under the heading and a box around the page, as reports have.
        text += b"0.5 w 50 745 m 560 745 l S 40 40 532 712 re S\n"
        objects.append(ec.pdf_stream("", text))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    return ec.pdf(objects)


def outlined_text_content(glyphs: int = 3000) -> bytes:
    """Text converted to outlines, as print shops do: thousands of small filled paths in
    lines, in black, with a blue heading."""
    ops = ["0 0 0.6 rg"]
    for i in range(glyphs):
        if i == 60:
            ops.append("0 g")
        line, col = divmod(i, 60)
        x, y = 40 + col * 9, PAGE_H - 40 - line * 12
        ops.append(f"{x} {y} m {x + 6} {y} l {x + 6} {y + 8} l {x + 3} {y + 9} "
                   f"{x} {y + 9} {x} {y + 6} c h f")
    return "\n".join(ops).encode() + b"\n"


@pytest.mark.parametrize("kind", ["text", "outlined-text"])
def test_text_makes_no_region(kind: str) -> None:
    """Text (with a rule and a frame), or text drawn as thousands of small paths in two
    colours, shows no picture: no region, nothing unscannable."""
    pdf = text_pdf(3) if kind == "text" else Doc(outlined_text_content()).bytes()
    ex = attached(pdf)
    assert region_paths(ex) == []
    assert ex.unscannable == ()


def tiny_paths_pdf(count: int) -> bytes:
    """`count` tiny filled squares (0.6 pt, in many colours) covering the page's middle."""
    ops = []
    side = int(count ** 0.5) + 1
    for i in range(count):
        r, c = divmod(i, side)
        ops.append(f"{(i * 37 % 256) / 255:.2f} {(i * 91 % 256) / 255:.2f} 0.5 rg "
                   f"{X0 + c * 0.6:.1f} {Y0 + r * 0.6:.1f} 0.6 0.6 re f")
    return Doc("\n".join(ops).encode()).bytes()


def test_a_page_of_100k_tiny_paths_ends_in_bounded_time() -> None:
    """100,000 paths on one page: walked and rendered (one region) within the render
    deadline (about 1.5 s on an idle core; on a loaded machine the walk may reach the
    deadline, and then the page is reported); with a deadline too short for the walk, the
    page is reported, not dropped."""
    import time

    pdf = tiny_paths_pdf(100_000)
    started = time.perf_counter()
    ex = attached(pdf)
    assert time.perf_counter() - started < LIMITS.pdf_render_deadline + 10.0
    if ex.unscannable:
        assert reasons(ex) == {("2/d.pdf", "pages-past-limit")}
        assert region_paths(ex) == []
    else:
        assert region_paths(ex) == ["2/d.pdf/page-1-region-1.png"]
    started = time.perf_counter()
    ex = attached(pdf, limits=ExtractSettings(pdf_render_deadline=0.05))
    assert time.perf_counter() - started < 10.0
    assert region_paths(ex) == []
    assert reasons(ex) == {("2/d.pdf", "pages-past-limit")}
    assert "limit or the deadline" in ex.unscannable[0].detail


def test_vector_regions_past_the_limit_are_reported() -> None:
    """Twenty separate mosaics on one page: the largest 16 are rendered, the rest are
    reported for the page, not dropped."""
    rng = np.random.default_rng(5)
    ops = []
    for block in range(20):
        bx, by = 20 + block % 5 * 150, 20 + block // 5 * 150
        for r in range(12):
            for c in range(12):
                red, green, blue = rng.random(3)
                ops.append(f"{red:.2f} {green:.2f} {blue:.2f} rg {bx + c * 8} {by + r * 8} "
                           "8 8 re f")
    ex = attached(Doc("\n".join(ops).encode()).bytes())
    assert len(region_paths(ex)) == 16
    assert reasons(ex) == {("2/d.pdf/page-1", "pages-past-limit")}
    assert "4 of 20 regions drawn with paths" in ex.unscannable[0].detail


def mesh_shading(cols: int = 64, rows: int = 48) -> bytes:
    """A lattice-form Gouraud mesh (shading type 5) over the photo's place: a vertex per
    pixel of a downscaled copy, coloured like it. No image object, no path of detail."""
    small = np.asarray(PHOTO_IMG.resize((cols + 1, rows + 1)), np.uint8)
    data = bytearray()
    for r in range(rows + 1):
        for c in range(cols + 1):
            x, y = c * 65535 // cols, (rows - r) * 65535 // rows
            data += x.to_bytes(2, "big") + y.to_bytes(2, "big") + bytes(small[r, c])
    return ec.pdf_stream(
        f"/ShadingType 5 /ColorSpace /DeviceRGB /VerticesPerRow {cols + 1} "
        f"/BitsPerCoordinate 16 /BitsPerComponent 8 "
        f"/Decode [{X0} {X0 + W} {Y0} {Y0 + H} 0 1 0 1 0 1] /Filter /FlateDecode",
        zlib.compress(bytes(data)))


@pytest.mark.parametrize("painted_by", ["sh", "shading-pattern"])
def test_a_picture_drawn_as_a_mesh_shading_is_matched(painted_by: str,
                                                      tmp_path: Path) -> None:
    """The photo as a mesh shading, painted with `sh` or as a shading pattern filling a
    rectangle: pdftoppm shows it, and so does the region rendered there."""
    objects = Doc(b"").objects()
    if painted_by == "sh":
        objects[3] = ec.pdf_stream("", b"q /Sh1 sh Q\n")
        resources = b"/Resources << /Shading << /Sh1 5 0 R >> >>"
        objects.append(mesh_shading())
    else:
        objects[3] = ec.pdf_stream("", f"/Pattern cs /P1 scn {X0} {Y0} {W} {H} re f\n".encode())
        resources = b"/Resources << /Pattern << /P1 5 0 R >> >>"
        objects += [b"<< /PatternType 2 /Shading 6 0 R >>", mesh_shading()]
    objects[2] = objects[2].replace(b"/Resources << /XObject <<  >> >>", resources)
    pdf = ec.pdf(objects)
    assert reference_distance(pdf, tmp_path) <= MAX_DISTANCE
    ex = attached(pdf)
    assert region_paths(ex) == ["2/d.pdf/page-1-region-1.png"]
    assert matched(ex)


def test_a_plain_gradient_makes_no_region() -> None:
    """An axial gradient over the page (slides have them) shows no picture: no region."""
    objects = Doc(b"q /Sh1 sh Q\n").objects()
    objects[2] = objects[2].replace(b"/Resources << /XObject <<  >> >>",
                                    b"/Resources << /Shading << /Sh1 5 0 R >> >>")
    objects.append(f"<< /ShadingType 2 /ColorSpace /DeviceRGB /Coords [0 0 {PAGE_W} {PAGE_H}] "
                   "/Function << /FunctionType 2 /Domain [0 1] /C0 [0 0 1] /C1 [1 1 1] /N 1 >> "
                   ">>".encode())
    ex = attached(ec.pdf(objects))
    assert region_paths(ex) == []
    assert ex.unscannable == ()
