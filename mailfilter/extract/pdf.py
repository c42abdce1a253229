"""Images inside PDF files, and files embedded in them.

Every stream object of the file is looked at, not only those the pages use (an image no page
shows still travels with the file). An image XObject compressed with DCTDecode *is* a JPEG
file and JPXDecode a JPEG 2000 file: those bytes are passed on unchanged. Other images are raw
samples; they are rebuilt into PNG files. Bilevel images (image masks, CCITT fax, JBIG2) are
scanned-document pages and stencils, not pictures; they are noted as defects and left out.
Embedded files (`/EmbeddedFile` streams) are walked like any other payload.

Objects are found the way lenient viewers find them: those of the cross-reference table,
then every `N G obj` header in the file that the table does not point at (a broken or
missing table, an object left out of it, an older version of an object shadowed by a newer
one). A file without any `startxref` is read again with one pointing nowhere, which makes
pypdf rebuild the table by scanning. A stream whose `/Length` is wrong and whose `endstream`
is missing runs to the next `endobj`, object header or the end of the file; ASCII85 is
decoded leniently (no `~>` end marker, junk after it, a `<~` start). Encrypted files are
opened with the empty user password (RC4 and AES, with the cryptography package); one that
needs a real password is `encrypted-archive`, and AES without cryptography is
`unsupported-archive` (PDFium still renders it).

Then the pages are rendered where they draw images (pdf_render.py), so that what a viewer
shows is fingerprinted too: inline images, /Decode inversions, clips, soft masks, blend
modes, tiles, annotation appearances, tiling patterns, mesh shadings, and pictures drawn
with paths (no image at all). An image drawn whole with nothing
painted over it, whose stored copy is plain (8-bit RGB or grey, JPEG or Flate, nothing in
its dictionary that changes the samples), is not rendered again. A file PDFium cannot
open, even with a trailer found for it, is `corrupt-archive`, unless it holds no page (or
no object) at all: defect `pdf-without-pages`. A file that PDFium does not open (a stub,
a file cut off early: viewers draw no page of it) is looked at byte by byte instead: each
stream decoded as far as it goes (Flate up to a cut, ASCII85, ASCIIHex) is walked, and the
file is carved; it is defect `pdf-unreadable` unless a stream could still hide a picture
(another filter, an inline image, heavy vector painting), which stays `corrupt-archive`.

Last, what unarchivers find in the same bytes: a zip whose directory ends the file (glued
after the PDF, or stored in one of its streams), and signatures after the last `%%EOF`
(carved as sweep.py does).

pypdf decodes the streams, with its limits set from what is left of the decoded-byte budget
for the duration of the file, and never calls external programs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mailfilter.extract import archives, core, pdf_render, sniff, sweep
from mailfilter.extract.containers import Fail
from mailfilter.extract.core import Context, Node, PayloadNode, member_path

# At most this many PDF objects are looked at per message (all its PDFs together); a PDF
# with more is recorded as unscannable (max-parts) after the first ones.
MAX_PDF_OBJECTS = 10_000
_PYPDF_STREAM_CAP = 75_000_000

# `N G obj` where a PDF object starts (PDF whitespace: NUL, tab, LF, FF, CR, space).
_OBJ_HEADER = re.compile(rb"(?<![0-9])([0-9]{1,10})[\x00\t\n\x0c\r ]+([0-9]{1,5})"
                         rb"[\x00\t\n\x0c\r ]+obj(?![A-Za-z0-9])")
_STREAM_KEYWORD = re.compile(rb"(?<![A-Za-z])stream(?:\r\n|\r|\n)?")
_MAX_DICT_BYTES = 1 << 20
# Pages, and patterns (or shadings) per page, looked at for patterns that paint images and
# mesh shadings.
_MAX_PATTERN_PAGES = 1000
_MAX_PATTERNS = 100
# The inline-image operator `BI` (between delimiters), and how many decoded content bytes
# per document are searched for it before every image counts as possibly inline-drawn.
_INLINE_IMAGE = re.compile(rb"(?:^|[\x00\t\n\x0c\r \]\)>}])BI[\x00\t\n\x0c\r /]")
_INLINE_SCAN_BYTES = 64 << 20
_CATALOG = re.compile(rb"/Type\s*/Catalog(?![A-Za-z0-9])")
_CATALOG_WINDOW = 4096  # a catalog dictionary is short; where it is not, the table has it
_WHITESPACE = b"\x00\t\n\x0c\r "

_BILEVEL_FILTERS = frozenset({"/CCITTFaxDecode", "/CCF", "/JBIG2Decode"})
_JPEG_FILTERS = frozenset({"/DCTDecode", "/DCT"})
_JPX_FILTERS = frozenset({"/JPXDecode"})
_ASCII85_FILTERS = frozenset({"/ASCII85Decode", "/A85"})
# Bytes outside ASCII85's alphabet ("!" to "u", and "z" for four zero bytes).
_NOT_ASCII85 = bytes(c for c in range(256) if not (33 <= c <= 117 or c == 122))


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


def _data(obj: Any) -> bytes:
    """A stream's decoded data; ASCII85 first in the chain is decoded the lenient way when
    pypdf refuses it (junk after the `~>` end marker, a `<~` start marker, stray bytes)."""
    from pypdf.errors import LimitReachedError
    from pypdf.generic import ArrayObject, EncodedStreamObject, NameObject

    try:
        return bytes(obj.get_data())
    except LimitReachedError:
        raise
    except Exception:
        filters = _filters(obj)
        if not filters or filters[0] not in _ASCII85_FILTERS:
            raise
    data = _ascii85(bytes(getattr(obj, "_data", b"")))
    rest = filters[1:]
    if not rest:
        return data
    again = EncodedStreamObject()
    again.update(obj)
    again[NameObject("/Filter")] = ArrayObject([NameObject(f) for f in rest])
    parms = _resolve(obj.get("/DecodeParms"))
    if isinstance(parms, list):
        again[NameObject("/DecodeParms")] = ArrayObject(parms[1:])
    again._data = data
    return bytes(again.get_data())


def _ascii85(text: bytes) -> bytes:
    """ASCII85 as lenient readers decode it: from after an optional `<~` to the first `~>`
    (or the end), characters outside the alphabet dropped, a short last group completed."""
    start = text.find(b"<~")
    if start >= 0 and not text[:start].strip(_WHITESPACE):
        text = text[start + 2 :]
    end = text.find(b"~>")
    if end >= 0:
        text = text[:end]
    return base64.a85decode(text.translate(None, _NOT_ASCII85), adobe=False)


def _expected_size(obj: Any) -> int:
    width = int(_resolve(obj.get("/Width", 0)))
    height = int(_resolve(obj.get("/Height", 0)))
    bpc = int(_resolve(obj.get("/BitsPerComponent", 8)))
    return max(0, (width * 4 * max(bpc, 1) + 7) // 8 * height)


def _image(ctx: Context, node: PayloadNode, obj: Any, num: int | str) -> PayloadNode | None:
    filters = _filters(obj)
    last = filters[-1] if filters else ""
    base = member_path(node.path, f"image-{num}")
    containers = (*node.containers, sniff.PDF)
    if _resolve(obj.get("/ImageMask")) or last in _BILEVEL_FILTERS:
        ctx.defect(base, "pdf-bilevel-image-skipped")
        return None
    if last in _JPEG_FILTERS or last in _JPX_FILTERS:
        data = _data(obj)
        if not ctx.fits(base, len(data)):
            return None
        ctx.charge(len(data))
        ext, ctype = ("jpg", "image/jpeg") if last in _JPEG_FILTERS else ("jp2", "image/jp2")
        return PayloadNode(f"{base}.{ext}", containers, data, f"image-{num}.{ext}", ctype)
    expected = _expected_size(obj)
    if not ctx.fits(base, expected):
        return None
    try:
        png = _rebuild_png(obj, _data(obj), ctx, base)
    except _Unsupported as exc:
        ctx.skip(base, core.UNSUPPORTED_IMAGE, f"PDF image: {exc}")
        return None
    ctx.charge(expected + len(png))
    return PayloadNode(f"{base}.png", containers, png, f"image-{num}.png", "image/png")


def _open(data: bytes) -> tuple[Any, bool]:
    """A pypdf reader, and whether the cross-reference data had to be rebuilt: a file with no
    `startxref` at all (pypdf gives up) is read again with one pointing nowhere, which makes
    pypdf rebuild the table by scanning the file for objects, as viewers do."""
    from pypdf import PdfReader

    try:
        return PdfReader(io.BytesIO(data), strict=False), False
    except Exception as first:
        try:
            return PdfReader(io.BytesIO(data + b"\nstartxref\n0\n%%EOF\n"), strict=False), True
        except Exception:
            raise first from None


def _decrypt(ctx: Context, node: PayloadNode, reader: Any) -> str:
    """Open an encrypted PDF with the empty user password (what viewers do without asking):
    "open", or, with the reason recorded, "password" (it needs one) or "unsupported" (pypdf
    cannot decrypt it here, e.g. AES without the cryptography package: PDFium still can)."""
    from pypdf.errors import DependencyError

    try:
        opened = bool(reader.decrypt(""))
    except DependencyError as exc:
        ctx.skip(node.path, core.UNSUPPORTED_ARCHIVE, f"PDF encryption: {exc}"[:200])
        return "unsupported"
    except Exception as exc:
        ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, f"PDF: {exc}"[:200])
        return "password"
    if not opened:
        ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, "PDF needs a password")
        return "password"
    return "open"


def _scanned_headers(data: bytes) -> list[tuple[int, int, int]]:
    """(number, generation, offset) of every `N G obj` in the file, in file order."""
    return [(int(m.group(1)), int(m.group(2)), m.start()) for m in _OBJ_HEADER.finditer(data)]


def _object_at(reader: Any, data: bytes, offset: int, num: int, gen: int) -> Any:
    """The object whose header is at `offset`, read without the cross-reference table (an
    object the table misses, or an older version that a newer one shadows)."""
    from pypdf.generic import read_object

    stream = reader.stream
    stream.seek(offset)
    try:
        reader.read_object_header(stream)
        obj = read_object(stream, reader)
    except Exception:
        obj = _tolerant_stream(reader, data, offset)
    encryption = getattr(reader, "_encryption", None)
    if encryption is not None:
        obj = encryption.decrypt_object(obj, num, gen, strict=False)
    return obj


def _tolerant_stream(reader: Any, data: bytes, offset: int) -> Any:
    """A stream object read the way lenient viewers do when its `/Length` is wrong and no
    `endstream` follows: its data runs to the first `endstream`, `endobj` or next object
    header, or to the end of the file."""
    from pypdf.errors import PdfReadError
    from pypdf.generic import DictionaryObject, StreamObject, read_object

    header = _OBJ_HEADER.match(data, offset)
    if header is None:
        raise PdfReadError("no object header")
    keyword = _STREAM_KEYWORD.search(data, header.end(), header.end() + _MAX_DICT_BYTES)
    if keyword is None:
        raise PdfReadError("not a stream")
    head = read_object(io.BytesIO(data[header.end() : keyword.start()].lstrip(_WHITESPACE)),
                       reader)
    if not isinstance(head, DictionaryObject):
        raise PdfReadError("stream without a dictionary")
    begin = keyword.end()
    end = len(data)
    for marker in (b"endstream", b"endobj"):
        at = data.find(marker, begin)
        if at >= 0:
            end = min(end, at)
    following = _OBJ_HEADER.search(data, begin, end)
    if following is not None:
        end = following.start()
    body = data[begin:end]
    body = body[:-2] if body.endswith(b"\r\n") else body[:-1] if body[-1:] in b"\r\n" else body
    fields: dict[str, Any] = dict(head)
    fields["__streamdata__"] = body
    return StreamObject.initialize_from_dictionary(fields)


@dataclass(slots=True)
class _Stored:
    """What the pass over the stored objects of one PDF found."""

    reader: Any
    cap: int  # pypdf's output limit per stream
    found: list[PayloadNode] = field(default_factory=list)
    digests: set[bytes] = field(default_factory=set)  # of the payloads found
    # Raw stream data (SHA-256) of images passed on that any viewer draws exactly as
    # stored: the renderer need not render them again where nothing else changes them.
    plain: set[bytes] = field(default_factory=set)
    # Raw data (SHA-256) of image objects that are not plain: a plain twin with the same
    # bytes does not make them plain (PDFium tells the raw data, not the dictionary).
    tricky: set[bytes] = field(default_factory=set)
    # A content stream may paint an inline image, whose dictionary (a /Decode array) no
    # pass over the objects sees: then nothing counts as plain.
    inline: bool = False
    inline_budget: int = _INLINE_SCAN_BYTES
    # Raw data (SHA-256) of image objects with a soft or image mask -> the mask's pixel
    # size: a viewer draws the image at the mask's resolution when that is finer (a black
    # 8 x 8 image whose soft mask carries a photo shows the photo).
    masks: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    errors: int = 0

    def plain_for_rendering(self) -> frozenset[bytes]:
        return frozenset() if self.inline else frozenset(self.plain - self.tricky)


def images(ctx: Context, node: PayloadNode, quiet: bool = False) -> Iterator[Node]:
    """The PDF's images as stored (every image object, exact bytes where a JPEG is stored),
    its embedded files, then the regions where its pages draw images, rendered."""
    from pypdf import apply_configuration

    fail = Fail(ctx, node, quiet)
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
    stored_error: str | None = None
    stored = _Stored(None, cap)
    with apply_configuration(None, **limits):
        try:
            reader, rebuilt = _open(node.data)
        except Exception as exc:
            reader, stored_error = None, f"PDF: {type(exc).__name__}: {exc}"
        if reader is not None:
            if rebuilt:
                ctx.defect(node.path, "pdf-xref-rebuilt")
            state = _decrypt(ctx, node, reader) if reader.is_encrypted else "open"
            if state == "password":
                return  # PDFium could not open it either
            if state == "open":
                stored.reader = reader
                _stored(ctx, node, stored)
    yield from stored.found
    # Nothing to show: no page, or not one object in the file (a stub, or a cut-off file).
    pageless = reader is not None and (
        _page_count(reader) == 0 or _OBJ_HEADER.search(node.data) is None)
    patterns = _pattern_pages(stored.reader) if stored.reader is not None else frozenset()
    hints = pdf_render.Hints(stored.plain_for_rendering(), _trailer(node.data), patterns,
                             stored.masks)
    yield from _rendered(ctx, node, fail, stored_error, hints, pageless)
    yield from _glued(ctx, node)


def _glued(ctx: Context, node: PayloadNode) -> Iterator[Node]:
    """What unarchivers find in the PDF's bytes while viewers show the document: a zip whose
    directory ends the file (glued after it, or stored in one of its streams), and files
    whose signatures follow the last `%%EOF` (a 7z glued after it)."""
    opened = False
    if sniff.find_appended_zip(node.data):
        for child in archives.appended_zip(ctx, node):
            opened = True
            yield child
    if opened:
        return
    end = node.data.rfind(b"%%EOF")
    if end >= 0 and node.data[end + 5 :].strip(_WHITESPACE):
        yield from sweep.carve(ctx, sweep.Children(ctx, node, sniff.PDF), node.data, end + 5)


def _pattern_pages(reader: Any) -> frozenset[int]:
    """Pages (from 0) whose resources hold a tiling pattern that paints an image, or a mesh
    shading (types 4 to 7: triangles or patches with a colour at every vertex, which can
    carry a photo as well as an image can), itself or as a shading pattern."""
    found: set[int] = set()
    try:
        pages = reader.pages
        for index in range(min(len(pages), _MAX_PATTERN_PAGES)):
            resources = _resolve(pages[index].get("/Resources"))
            if not hasattr(resources, "get"):
                continue
            patterns = _resolve(resources.get("/Pattern"))
            shadings = _resolve(resources.get("/Shading"))
            patterns = patterns if hasattr(patterns, "values") else {}
            shadings = shadings if hasattr(shadings, "values") else {}
            if (any(_pattern_paints_image(_resolve(value))
                    for value in list(patterns.values())[:_MAX_PATTERNS])
                    or any(_mesh(value) for value in list(shadings.values())[:_MAX_PATTERNS])):
                found.add(index)
    except Exception:
        pass  # what was found so far stands; the stored images were read anyway
    return frozenset(found)


def _mesh(shading: Any) -> bool:
    shading = _resolve(shading)
    return hasattr(shading, "get") and _resolve(shading.get("/ShadingType")) in (4, 5, 6, 7)


def _pattern_paints_image(pattern: Any) -> bool:
    if not hasattr(pattern, "get"):
        return False
    if _resolve(pattern.get("/PatternType")) == 2:
        return _mesh(pattern.get("/Shading"))
    if _resolve(pattern.get("/PatternType")) != 1:
        return False
    resources = _resolve(pattern.get("/Resources"))
    xobjects = _resolve(resources.get("/XObject")) if hasattr(resources, "get") else None
    if xobjects and any(hasattr(x := _resolve(v), "get") and x.get("/Subtype") in
                        ("/Image", "/Form") for v in list(xobjects.values())[:_MAX_PATTERNS]):
        return True
    try:  # an inline image in the pattern's own content
        return b"BI" in bytes(pattern.get_data())[: 1 << 20]
    except Exception:
        return False


def _trailer(data: bytes) -> bytes | None:
    """A trailer naming the file's (last) catalog, for a file cut off before its own."""
    root: tuple[int, int] | None = None
    for num, gen, offset in _scanned_headers(data):
        body = data[offset : offset + _CATALOG_WINDOW]
        end = body.find(b"endobj")
        if _CATALOG.search(body if end < 0 else body[:end]):
            root = (num, gen)
    if root is None:
        return None
    # Cut off inside a stream: close it, or the trailer would be read as its data.
    close = b"\nendstream\nendobj" if data.rfind(b"stream") > data.rfind(b"endstream") + 3 else b""
    return close + f"\ntrailer\n<< /Root {root[0]} {root[1]} R >>\n%%EOF\n".encode()


def _page_count(reader: Any) -> int | None:
    try:
        return len(reader.pages)
    except Exception:
        return None


def _rendered(ctx: Context, node: PayloadNode, fail: Fail, stored_error: str | None,
              hints: pdf_render.Hints, pageless: bool) -> Iterator[Node]:
    """The rendered regions. A file PDFium cannot open is corrupt, unless pypdf read it and
    found no page (or no object at all) in it: PDFium refuses those, and there is nothing
    to show."""
    if ctx.limits.pdf_render_max_pages == 0:
        if stored_error is not None:
            fail(core.CORRUPT_ARCHIVE, stored_error)
        return
    try:
        for child in pdf_render.regions(ctx, node, hints):
            if not ctx.count_member(node.path):
                return
            yield child
    except ImportError as exc:  # pypdfium2 is a dependency; a broken install says so
        ctx.skip(node.path, core.UNSUPPORTED_ARCHIVE, f"PDF pages not rendered: {exc}"[:200])
        return
    except pdf_render.CannotOpen as exc:
        if pageless and stored_error is None:
            ctx.defect(node.path, "pdf-without-pages")
            return
        streams = _unopenable_streams(node.data, ctx.remaining)
        if streams is None:
            fail(core.CORRUPT_ARCHIVE, stored_error or str(exc))
            return
        # PDFium does not open it (a stub, a file cut off early): viewers draw no page of
        # it, and every byte that could hold a picture is in `streams`.
        ctx.defect(node.path, "pdf-unreadable")
        kids = sweep.Children(ctx, node, sniff.PDF)
        for number, data in enumerate(streams, 1):
            if not data or not kids.novel(data) or not ctx.fits(node.path, len(data)):
                continue
            if not kids.open():
                return
            yield kids.make(f"stream-{number}", data, None, None)
        yield from sweep.carve(ctx, kids, node.data)
        return
    except Exception as exc:  # PDFium's Python side: the stored images were still read
        ctx.skip(node.path, core.PAGES_PAST_LIMIT, f"rendering stopped: {type(exc).__name__}: "
                 f"{exc}"[:200])
        return
    if stored_error is not None:
        # PDFium rendered it, but its objects (exact bytes) could not be read.
        fail(core.CORRUPT_ARCHIVE, stored_error)


# Filters a file nobody opens is decoded with when it is looked at byte by byte, and the
# filters whose output is a picture file itself (carved by signature like any bytes).
_FLATE_FILTERS = frozenset({"/FlateDecode", "/Fl"})
_HEX_FILTERS = frozenset({"/ASCIIHexDecode", "/AHx"})
_NOT_HEX = bytes(c for c in range(256) if chr(c) not in "0123456789abcdefABCDEF")
_FILTER_NAMES = re.compile(rb"/Filter\s*\[?((?:\s*/[A-Za-z0-9]+)+)")
# More painting operators than this in one stream of an unopenable file: it might draw a
# picture in vectors, which only a renderer would see (pdf-vector-pixels), so it is not
# called looked at.
_MAX_PAINTS_UNSEEN = 256
_PAINT_OPERATORS = re.compile(rb"(?<![A-Za-z*'\"])(?:f\*?|F|B\*?|b\*?|sh)(?![A-Za-z0-9*])")
_MAX_UNOPENABLE_STREAMS = 1000


def _unopenable_streams(data: bytes, cap: int) -> list[bytes] | None:
    """The streams of a file that neither pypdf nor PDFium opens, decoded as far as they go
    (a cut-off Flate stream up to its cut), or None when one of them could still hide a
    picture from us: a filter we do not undo here, a stream that does not inflate at all,
    an inline image, or a page's worth of vector painting."""
    found: list[bytes] = []
    budget = max(0, cap)
    for count, m in enumerate(_STREAM_KEYWORD.finditer(data)):
        if count >= _MAX_UNOPENABLE_STREAMS:
            return None
        start = m.end()
        end = data.find(b"endstream", start)
        raw = data[start:] if end < 0 else data[start:end]
        head = data[max(0, m.start() - 2048) : m.start()]
        dictionary = head[head.rfind(b"<<") :] if b"<<" in head else b""
        names = _FILTER_NAMES.search(dictionary)
        filters = [b"/" + f for f in names.group(1).split(b"/")[1:]] if names else []
        decoded = raw
        for f in (x.strip().decode("latin-1") for x in filters):
            if f in _FLATE_FILTERS:
                inflater = zlib.decompressobj()
                try:
                    decoded = inflater.decompress(decoded, budget + 1)
                except zlib.error:
                    return None
                if not decoded and raw.strip(_WHITESPACE):
                    return None
            elif f in _ASCII85_FILTERS:
                try:
                    decoded = _ascii85(decoded)
                except ValueError:
                    return None
            elif f in _HEX_FILTERS:
                digits = decoded.split(b">", 1)[0].translate(None, _NOT_HEX)
                decoded = bytes.fromhex((digits + b"0" * (len(digits) % 2)).decode())
            elif f in _JPEG_FILTERS or f in _JPX_FILTERS:
                break  # the stream is the picture file: carved by its signature
            else:
                return None  # LZW, RunLength, CCITT, JBIG2, ...: not undone here
        if len(decoded) > budget:
            return None
        budget -= len(decoded)
        paints = _PAINT_OPERATORS.finditer(decoded)  # all of it: a picture can come late
        if _INLINE_IMAGE.search(decoded) or any(
                True for _ in itertools.islice(paints, _MAX_PAINTS_UNSEEN, None)):
            return None
        found.append(decoded)
    return found


def _stored(ctx: Context, node: PayloadNode, stored: _Stored) -> None:
    """Every image and embedded-file stream: the objects of the cross-reference table, then
    objects only a scan of the file finds (missed by a broken table, or shadowed by a newer
    version of the same number)."""
    reader = stored.reader
    refs = sorted((num, gen) for gen, table in reader.xref.items() for num in table if num > 0)
    for num, gen in refs:
        if not _stored_object(ctx, node, stored, num, gen, None):
            return
    # The table has been read (and repaired where pypdf searched for an object): now every
    # object header it does not point at.
    at = {(num, gen): off for gen, table in reader.xref.items() for num, off in table.items()}
    for num, gen, offset in _scanned_headers(node.data):
        if at.get((num, gen)) != offset and not _stored_object(ctx, node, stored, num, gen,
                                                               offset):
            return


def _stored_object(ctx: Context, node: PayloadNode, stored: _Stored, num: int, gen: int,
                   offset: int | None) -> bool:
    """Look at one object (by the table when `offset` is None); False once a limit says
    to stop."""
    from pypdf.errors import LimitReachedError
    from pypdf.generic import IndirectObject, StreamObject

    if ctx.pdf_objects >= MAX_PDF_OBJECTS:
        ctx.skip(node.path, core.MAX_PARTS, f"more than {MAX_PDF_OBJECTS} PDF objects in the "
                 "message")
        return False
    ctx.pdf_objects += 1
    reader = stored.reader
    name: int | str = num if offset is None else f"{num}-at-{offset}"
    try:
        if offset is None:
            try:
                obj = reader.get_object(IndirectObject(num, gen, reader))
            except LimitReachedError:
                raise
            except Exception:
                listed = reader.xref.get(gen, {}).get(num)
                if listed is None:
                    raise
                obj = _object_at(reader, node.data, listed, num, gen)
        else:
            obj = _object_at(reader, node.data, offset, num, gen)
        if not isinstance(obj, StreamObject):
            return True
        raw_digest: bytes | None = None
        if obj.get("/Subtype") == "/Image":
            raw = getattr(obj, "_data", None)
            raw_digest = hashlib.sha256(raw).digest() if isinstance(raw, bytes) else None
            plain = _plain(obj)
            if raw_digest is not None and not plain:
                stored.tricky.add(raw_digest)
                mask = _mask_size(obj)
                if mask is not None:
                    stored.masks[raw_digest] = mask
            child = _image(ctx, node, obj, name)
        elif obj.get("/Type") == "/EmbeddedFile":
            child, plain = _embedded(ctx, node, obj, name), False
        else:
            if not stored.inline and _may_paint_inline_image(obj, stored):
                stored.inline = True
            return True
    except LimitReachedError as exc:
        where = member_path(node.path, f"object-{name}")
        ctx.skip(where, core.MAX_DECODED_BYTES, str(exc)[:200])
        ctx.charge(stored.cap)  # the work done counts against the budget
        return True
    except Exception as exc:
        if not stored.errors:
            ctx.defect(node.path, f"pdf-bad-object:{type(exc).__name__}")
        stored.errors += 1
        return True
    if child is None:
        return True
    digest = hashlib.sha256(child.data).digest()
    if digest in stored.digests:
        return True  # the same image again (an older version of an object, unchanged)
    stored.digests.add(digest)
    if not ctx.count_member(node.path):
        return False
    stored.found.append(child)
    if plain and raw_digest is not None:
        stored.plain.add(raw_digest)
    return True


def _may_paint_inline_image(obj: Any, stored: _Stored) -> bool:
    """Whether a stream that may be content (a page's, a form's, a pattern's, a glyph's)
    holds the `BI` operator. Fonts, profiles and metadata are not looked at; data that
    cannot be looked at cheaply (other filters, past the byte allowance) counts as yes."""
    if obj.get("/Type") is not None and obj.get("/Type") != "/Pattern":
        return False  # metadata, object and xref streams, embedded files...
    subtype = obj.get("/Subtype")
    if (subtype is not None and subtype != "/Form") or "/Length1" in obj or "/N" in obj:
        return False  # font programs, ICC profiles
    filters = _filters(obj)
    raw = getattr(obj, "_data", b"")
    if not isinstance(raw, bytes):
        return True
    if not filters:
        data = raw
    elif filters in (["/FlateDecode"], ["/Fl"]):
        try:
            data = zlib.decompressobj().decompress(raw, max(1, stored.inline_budget))
        except zlib.error:
            return True
    else:
        return True
    stored.inline_budget -= len(data)
    return stored.inline_budget < 0 or _INLINE_IMAGE.search(data) is not None


def _mask_size(obj: Any) -> tuple[int, int] | None:
    """The pixel size of an image XObject's /SMask (or image /Mask), if it has one."""
    try:
        for key in ("/SMask", "/Mask"):
            mask = _resolve(obj.get(key))
            if mask is None or not hasattr(mask, "get"):
                continue
            width = int(_resolve(mask.get("/Width", 0)))
            height = int(_resolve(mask.get("/Height", 0)))
            if width > 0 and height > 0:
                return width, height
    except Exception:
        return None
    return None


def _plain(obj: Any) -> bool:
    """Whether every viewer draws this image XObject's samples as our copy of it shows them:
    8-bit RGB or grey, a JPEG or Flate (or no) filter, nothing that changes the samples on
    the way to the page (/Decode, /SMask, /Mask, an ICC profile, a palette)."""
    try:
        return _plain_dictionary(obj)
    except Exception:
        return False


def _plain_dictionary(obj: Any) -> bool:
    if any(key in obj for key in ("/Decode", "/SMask", "/Mask", "/ImageMask", "/SMaskInData")):
        return False
    colour = _resolve(obj.get("/ColorSpace"))
    if not isinstance(colour, str) or str(colour) not in ("/DeviceRGB", "/DeviceGray"):
        return False
    if int(_resolve(obj.get("/BitsPerComponent", 0))) != 8:
        return False
    filters = _filters(obj)
    if filters and filters[-1] in _JPEG_FILTERS:
        # A JPEG's own ICC profile: PDF viewers ignore it, the decode stage may not.
        raw = getattr(obj, "_data", b"")
        return len(filters) == 1 and b"ICC_PROFILE\x00" not in raw
    return len(filters) <= 1 and all(f == "/FlateDecode" for f in filters)


def _embedded(ctx: Context, node: PayloadNode, obj: Any, num: int | str
              ) -> PayloadNode | None:
    path = member_path(node.path, f"embedded-{num}")
    data = _data(obj)
    if not ctx.fits(path, len(data)):
        return None
    ctx.charge(len(data))
    subtype = _resolve(obj.get("/Subtype"))
    ctype = str(subtype)[1:].replace("#2F", "/") if subtype is not None else None
    return PayloadNode(path, (*node.containers, sniff.PDF), data, None, ctype)
