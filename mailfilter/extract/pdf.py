"""Images inside PDF files, and files embedded in them.

Every stream object of the file is looked at, not only those the pages use (an image no page
shows still travels with the file). An image XObject compressed with DCTDecode *is* a JPEG
file and JPXDecode a JPEG 2000 file: those bytes are passed on unchanged. Other images are raw
samples; they are rebuilt into PNG files. Bilevel images (image masks, CCITT fax, JBIG2) are
scanned-document pages and stencils, not pictures; they are noted as defects and left out.
Embedded files (`/EmbeddedFile` streams) are walked like any other payload.

pypdf decodes the streams, with its limits set from what is left of the decoded-byte budget
for the duration of the file, and never calls external programs.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

from mailfilter.extract import core, sniff
from mailfilter.extract.archives import Fail
from mailfilter.extract.core import Context, Node, PayloadNode, member_path

# At most this many PDF objects are looked at per message (all its PDFs together); a PDF
# with more is recorded as unscannable (max-parts) after the first ones.
MAX_PDF_OBJECTS = 10_000
_PYPDF_STREAM_CAP = 75_000_000

_BILEVEL_FILTERS = frozenset({"/CCITTFaxDecode", "/CCF", "/JBIG2Decode"})
_JPEG_FILTERS = frozenset({"/DCTDecode", "/DCT"})
_JPX_FILTERS = frozenset({"/JPXDecode"})


# pypdf logs what it finds wrong with a file, quoting the file's bytes ("invalid pdf
# header: b'%PDF...'"), and in a worker process that goes straight to the server's log.
# What matters is recorded by the walk (defects, unscannable); logs never carry content.
logging.getLogger("pypdf").setLevel(logging.CRITICAL + 1)


class _Unsupported(Exception):
    pass


def _resolve(value: Any) -> Any:
    return value.get_object() if hasattr(value, "get_object") else value


def _filters(obj: Any) -> list[str]:
    f = _resolve(obj.get("/Filter"))
    if f is None:
        return []
    if isinstance(f, list):
        return [str(_resolve(x)) for x in f]
    return [str(f)]


def _colour_space(cs: Any) -> tuple[str, int, bytes | None, bool]:
    """(Pillow mode, components, palette as RGB bytes for Indexed, invert)."""
    cs = _resolve(cs)
    if cs is None:
        return "L", 1, None, False
    if isinstance(cs, list) and cs:
        family = str(_resolve(cs[0]))
        if family == "/ICCBased" and len(cs) > 1:
            n = int(_resolve(_resolve(cs[1]).get("/N", 3)))
            return (*{1: ("L", 1), 3: ("RGB", 3), 4: ("CMYK", 4)}.get(n, ("RGB", 3)), None, False)
        if family in ("/CalRGB", "/CalGray", "/DeviceRGB", "/DeviceGray", "/DeviceCMYK"):
            return _colour_space(_resolve(cs[0]))
        if family == "/Indexed" and len(cs) >= 4:
            base_mode, base_n, _, _ = _colour_space(cs[1])
            hival = int(_resolve(cs[2]))
            return "P", 1, _palette(base_mode, base_n, _bytes(_resolve(cs[3])), hival), False
        if family == "/Separation":
            return "L", 1, None, True
        if family == "/DeviceN" and len(cs) > 1 and len(_resolve(cs[1])) == 1:
            return "L", 1, None, True
        raise _Unsupported(f"colour space {family}")
    name = str(cs)
    if name in ("/DeviceRGB", "/CalRGB", "/RGB"):
        return "RGB", 3, None, False
    if name in ("/DeviceGray", "/CalGray", "/G"):
        return "L", 1, None, False
    if name in ("/DeviceCMYK", "/CMYK"):
        return "CMYK", 4, None, False
    raise _Unsupported(f"colour space {name}")


def _bytes(value: Any) -> bytes:
    """The bytes of a PDF string or stream (an Indexed colour space's lookup table)."""
    if hasattr(value, "get_data"):
        return bytes(value.get_data())
    if isinstance(value, bytes):
        return bytes(value)
    original = getattr(value, "original_bytes", None)
    if isinstance(original, bytes):
        return original
    return str(value).encode("latin-1", "replace")


def _palette(base_mode: str, base_n: int, table: bytes, hival: int) -> bytes:
    from PIL import Image

    entries = min(hival + 1, 256)
    raw = table[: entries * base_n].ljust(entries * base_n, b"\x00")
    if base_mode == "RGB":
        return raw
    img = Image.frombytes(base_mode, (entries, 1), raw)
    return img.convert("RGB").tobytes()


def _rebuild_png(obj: Any, data: bytes, ctx: Context, path: str) -> bytes:
    from PIL import Image, ImageOps

    width = int(_resolve(obj.get("/Width", 0)))
    height = int(_resolve(obj.get("/Height", 0)))
    bpc = int(_resolve(obj.get("/BitsPerComponent", 8)))
    mode, comps, palette, invert = _colour_space(obj.get("/ColorSpace"))
    if width <= 0 or height <= 0:
        raise _Unsupported("no size")
    decode = _resolve(obj.get("/Decode"))
    if (
        decode is not None
        and comps == 1
        and palette is None
        and len(decode) >= 2
        and float(_resolve(decode[0])) > float(_resolve(decode[1]))
    ):
        invert = not invert
    if bpc == 16:
        data = data[::2]
        bpc = 8
    if bpc == 8:
        rawmode = mode
    elif comps == 1 and bpc in (1, 2, 4):
        if mode == "P":
            rawmode = f"P;{bpc}"
        else:
            mode, rawmode = ("1", "1") if bpc == 1 else ("L", f"L;{bpc}")
    else:
        raise _Unsupported(f"{bpc} bits per component in {mode}")
    row = (width * comps * bpc + 7) // 8
    expected = row * height
    if len(data) < expected:
        data = data.ljust(expected, b"\x00")
        ctx.defect(path, "pdf-image-data-short")
    img = Image.frombytes(mode, (width, height), data[:expected], "raw", rawmode)
    if palette is not None:
        img.putpalette(palette)
    if mode == "CMYK":
        img = img.convert("RGB")
    if invert:
        img = ImageOps.invert(img.convert("L"))
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _expected_size(obj: Any) -> int:
    width = int(_resolve(obj.get("/Width", 0)))
    height = int(_resolve(obj.get("/Height", 0)))
    bpc = int(_resolve(obj.get("/BitsPerComponent", 8)))
    return max(0, (width * 4 * max(bpc, 1) + 7) // 8 * height)


def _image(ctx: Context, node: PayloadNode, obj: Any, num: int) -> PayloadNode | None:
    filters = _filters(obj)
    last = filters[-1] if filters else ""
    base = member_path(node.path, f"image-{num}")
    containers = (*node.containers, sniff.PDF)
    if _resolve(obj.get("/ImageMask")) or last in _BILEVEL_FILTERS:
        ctx.defect(base, "pdf-bilevel-image-skipped")
        return None
    if last in _JPEG_FILTERS or last in _JPX_FILTERS:
        data = obj.get_data()
        if not ctx.fits(base, len(data)):
            return None
        ctx.charge(len(data))
        ext, ctype = ("jpg", "image/jpeg") if last in _JPEG_FILTERS else ("jp2", "image/jp2")
        return PayloadNode(f"{base}.{ext}", containers, data, f"image-{num}.{ext}", ctype)
    expected = _expected_size(obj)
    if not ctx.fits(base, expected):
        return None
    try:
        png = _rebuild_png(obj, obj.get_data(), ctx, base)
    except _Unsupported as exc:
        ctx.skip(base, core.UNSUPPORTED_IMAGE, f"PDF image: {exc}")
        return None
    ctx.charge(expected + len(png))
    return PayloadNode(f"{base}.png", containers, png, f"image-{num}.png", "image/png")


def images(ctx: Context, node: PayloadNode, quiet: bool = False) -> Iterator[Node]:
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import DependencyError, LimitReachedError
    from pypdf.generic import IndirectObject, StreamObject

    fail = Fail(ctx, node, quiet)
    found: list[PayloadNode] = []
    cap = max(1, min(ctx.remaining, _PYPDF_STREAM_CAP))
    limits = {
        "maximum_declared_stream_length": cap,
        "array_based_stream_maximum_output_length": cap,
        "jbig2_maximum_output_length": cap,
        "lzw_maximum_output_length": cap,
        "run_length_maximum_output_length": cap,
        "zlib_maximum_output_length": cap,
        "brotli_maximum_output_length": cap,
        "image_maximum_buffer_size": cap,
        "stream_decoding_work_maximum_length": 2 * cap,
        "jbig2dec_binary": None,
    }
    with apply_configuration(None, **limits):
        try:
            reader = PdfReader(io.BytesIO(node.data), strict=False)
            encrypted = reader.is_encrypted
        except Exception as exc:
            fail(core.CORRUPT_ARCHIVE, f"PDF: {type(exc).__name__}: {exc}")
            return
        if encrypted:
            try:
                opened = bool(reader.decrypt(""))
            except DependencyError as exc:
                ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, f"PDF encryption: {exc}"[:200])
                return
            except Exception as exc:
                ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, f"PDF: {exc}"[:200])
                return
            if not opened:
                ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, "PDF needs a password")
                return
        refs = sorted(
            (num, gen) for gen, table in reader.xref.items() for num in table if num > 0
        )
        allowed = max(0, MAX_PDF_OBJECTS - ctx.pdf_objects)
        if len(refs) > allowed:
            detail = f"more than {MAX_PDF_OBJECTS} PDF objects in the message"
            ctx.skip(node.path, core.MAX_PARTS, detail)
            refs = refs[:allowed]
        ctx.pdf_objects += len(refs)
        bad = 0
        for num, gen in refs:
            try:
                obj = reader.get_object(IndirectObject(num, gen, reader))
                if not isinstance(obj, StreamObject):
                    continue
                if obj.get("/Subtype") == "/Image":
                    child = _image(ctx, node, obj, num)
                elif obj.get("/Type") == "/EmbeddedFile":
                    child = _embedded(ctx, node, obj, num)
                else:
                    continue
            except LimitReachedError as exc:
                where = member_path(node.path, f"object-{num}")
                ctx.skip(where, core.MAX_DECODED_BYTES, str(exc)[:200])
                ctx.charge(cap)  # the work done counts against the budget
                continue
            except Exception as exc:
                bad += 1
                if bad == 1:
                    ctx.defect(node.path, f"pdf-bad-object:{type(exc).__name__}")
                continue
            if child is None:
                continue
            if not ctx.count_member(node.path):
                break
            found.append(child)
    yield from found


def _embedded(ctx: Context, node: PayloadNode, obj: Any, num: int) -> PayloadNode | None:
    path = member_path(node.path, f"embedded-{num}")
    data = obj.get_data()
    if not ctx.fits(path, len(data)):
        return None
    ctx.charge(len(data))
    subtype = _resolve(obj.get("/Subtype"))
    ctype = str(subtype)[1:].replace("#2F", "/") if subtype is not None else None
    return PayloadNode(path, (*node.containers, sniff.PDF), data, None, ctype)
