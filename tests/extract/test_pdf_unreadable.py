"""PDFs that PDFium does not open (stubs, files cut off early; pdftoppm refuses them too):
looked at byte by byte. A stub with nothing in it is a defect, not unscannable (the noise
of issue 15 item 7: the libraries' fixtures hold many); a picture in a cut-off stream is
still found; and where a stream could still hide a picture from us (vector painting, an
inline image, a filter not undone) the file stays `corrupt-archive`."""

from __future__ import annotations

import io
import zlib

import extract_corpus as ec
from factories import photo_like
from PIL import Image

from mailfilter.extract import extract
from mailfilter.model import Extraction
from mailfilter.settings import ExtractSettings

LIMITS = ExtractSettings()


def attached(data: bytes) -> Extraction:
    raw = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"see attached\n"),
                                            ec.attachment("application/pdf", data, "d.pdf")],
                                  "pb"))
    return extract(raw, LIMITS)


def reasons(ex: Extraction) -> set[str]:
    return {u.reason for u in ex.unscannable}


def cut_after_stream(dictionary: bytes, data: bytes, keep: int) -> bytes:
    """A PDF that starts like a real one and is cut `keep` bytes into its first stream."""
    return (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< " + dictionary + b" >>\nstream\n"
            + data[:keep])


def test_stub_without_streams_is_a_defect() -> None:
    stub = b"%PDF-1.2\r\n\r\n4 0 obj\r\n<<\r\n/E 6195\r\n/Linearized 1\r\n/N 1\r\n"
    ex = attached(stub)
    assert reasons(ex) == set()
    assert any(d.startswith("pdf-unreadable") for d in ex.defects), ex.defects


def test_cut_off_text_stream_is_a_defect() -> None:
    content = zlib.compress(b"BT /F1 12 Tf 72 712 Td (Hello) Tj ET\n" * 40)
    ex = attached(cut_after_stream(b"/Length 2 0 R /Filter /FlateDecode", content, 60))
    assert reasons(ex) == set()
    assert any(d.startswith("pdf-unreadable") for d in ex.defects), ex.defects


def test_picture_in_a_cut_off_flate_stream_is_found() -> None:
    out = io.BytesIO()
    photo_like(7, 160, 120).save(out, "PNG")
    png = out.getvalue()
    # An embedded file (Flate) holding a PNG, cut off after the whole PNG went by.
    packed = zlib.compress(png + b"\0" * 4096)
    ex = attached(cut_after_stream(b"/Type /EmbeddedFile /Filter /FlateDecode", packed,
                                   len(packed) - 20))
    assert any(a.data.startswith(png[:64]) and Image.open(io.BytesIO(a.data)).size == (160, 120)
               for a in ex.attachments), [a.mime_path for a in ex.attachments]


def test_heavy_vector_painting_stays_unscannable() -> None:
    # Thousands of filled rectangles: a picture drawn in vectors, which only a renderer sees.
    rects = b"".join(f"{x} {y} 1 1 re f\n".encode() for x in range(60) for y in range(40))
    ex = attached(cut_after_stream(b"/Length 99 0 R", rects, len(rects) - 10))
    assert "corrupt-archive" in reasons(ex)


def test_inline_image_stays_unscannable() -> None:
    inline = b"q 100 0 0 100 0 0 cm BI /W 10 /H 10 /CS /G /BPC 8 ID " + bytes(100) + b" EI Q\n"
    ex = attached(cut_after_stream(b"/Length 99 0 R", inline, len(inline)))
    assert "corrupt-archive" in reasons(ex)


def test_filter_not_undone_stays_unscannable() -> None:
    ex = attached(cut_after_stream(b"/Filter /LZWDecode", b"\x80\x0b\x60\x50\x22" * 50, 200))
    assert "corrupt-archive" in reasons(ex)
