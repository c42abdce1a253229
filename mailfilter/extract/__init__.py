"""The extract stage: raw message bytes → every candidate image payload in it.

    extract(raw, limits) -> Extraction

Walks the MIME tree (numbering parts the way IMAP does: `2.1.3`), decodes transfer
encodings (forgiving broken base64 the way mail clients do), and opens what the bytes turn out
to be, whatever they are called: forwarded messages (`message/rfc822`, saved .eml files),
opaque S/MIME, OpenPGP, ZIP (so OOXML and ODF too), TAR, gzip, bzip2, xz, lzma, compress,
lzip, lz4, zstd, 7z, RAR, ISO 9660, CAB, cpio, xar, TNEF (winmail.dat) and PDF files (image
objects, and pages rendered where they draw images), Windows metafiles (the bitmaps WMF and
EMF records draw), audio files (ID3, FLAC and Ogg cover art), uuencoded blocks, BinHex,
RTF pictures,
`data:` URIs and bare base64 in text. After the walk, the content sweep (sweep.py) decodes
base64, uuencode and BinHex runs the walk did not decode, and carves signatures out of
unknown binary.

Paths: a container that is a MIME part adds its filename, and each member its name:
`2/photos.zip/a.jpg` is a.jpg inside photos.zip, which is part 2; `2/photos.zip/in.zip/b.png`
is b.png inside in.zip inside it. A forwarded message continues IMAP numbering (`3.2`); a
message found inside a container numbers its parts after a `/` (`2/mail.zip/fwd.eml/1.2`).
Payloads found in a text body are named after it: `1.1/uu.gif` (a uuencoded block),
`1.2/data-uri-1` (a `data:` URI). `containers` lists the container types outermost first
(`message/rfc822`, `application/zip`, ...; `text/plain` or `text/html` for text-borne ones).

Images are recognised by their magic bytes; a part that only claims to be an image (type
image/*, or an image filename) is passed on too, and the decode stage decides. Text is never
passed on as a candidate.

Parsing never raises. RFC violations are tolerated and listed in `defects`; what could not be
examined is listed in `unscannable` with one of these reason codes:

    max-depth            containers (or multiparts within one message) nested past max_depth
    max-parts            more MIME parts than max_parts (the walk stops there)
    max-decoded-bytes    decoding or expanding would pass max_decoded_bytes for the message
    max-archive-members  more container members in the message than max_archive_members
    max-expansion-ratio  a member or stream expands more than max_expansion_ratio (zip bombs)
    max-images           more images than max_images (the walk stops there)
    zip-bomb             an archive whose structure is a bomb (overlapping entries, a member
                         that expands past its declared size)
    encrypted-archive    an archive (or PDF) that needs a password
    encrypted-message    S/MIME enveloped data or PGP/MIME multipart/encrypted
    corrupt-archive      a container whose bytes say what it is but which cannot be read
    unsupported-archive  a container format or method we cannot read (e.g. compressed RAR
                         without an extraction tool installed, zip implode or PPMd)
    unsupported-image-encoding  a PDF image in a colour space we cannot rebuild
    partial-message      message/partial (a fragment of a message split over several mails)
    parse-error          anything unexpected while reading a part (the rest is still walked)
    pages-past-limit     PDF pages (or images on them) not rendered: the pdf_render_* limits
                         or an image over 100 MP
    carve-limit          more pieces carved out of other bytes than sweep.MAX_CARVED
    max-readings         more extra readings of ambiguous structures than the walk makes per
                         message (mime.MAX_READINGS)

Where mail readers would take the structure differently (two Content-Types, a boundary in
another case, lone CRs, ...), every reading is walked and the union handed on; readings
after the first are numbered under `PATH~N` (`~2/1`: part 1 of the message's second
reading), and each disagreement is listed in `ambiguities` (`code at path`; the codes are
listed in mime.py).
"""

from __future__ import annotations

from mailfilter.extract.core import PARSE_ERROR, NeedsWorker
from mailfilter.model import Extraction, Unscannable
from mailfilter.settings import ExtractSettings

__all__ = ["TEXT_ONLY_MAX_BYTES", "extract", "extract_text_only"]

TEXT_ONLY_MAX_BYTES = 32 * 1024


def extract(raw: bytes, limits: ExtractSettings, keep: frozenset[str] = frozenset()
            ) -> Extraction:
    """Every candidate image payload of a message, what could not be examined, and why.
    `keep`: SHA-256s of files (not images) whose bytes to hand back too (`kept_files`)."""
    from mailfilter.extract.walk import run

    try:
        return run(bytes(raw), limits, keep=keep)
    except Exception as exc:  # last resort: the walk contains its own errors
        return Extraction(
            attachments=(),
            unscannable=(Unscannable("", PARSE_ERROR, f"{type(exc).__name__}: {exc}"[:300]),),
        )


def extract_text_only(raw: bytes, limits: ExtractSettings) -> Extraction | None:
    """`extract` for a small message that turns out to be text only (most mail), else None.

    Cheap enough to run where a worker round trip would cost more than the walk (the event
    loop): the same walk, in a mode that gives up, returning None, at the first image,
    container (attachments, forwarded messages, archives), payload found in text, or more
    than a few parts; and only for messages up to TEXT_ONLY_MAX_BYTES, so its cost is
    bounded by a walk over a few parts of a small message. None means: use `extract` in a
    worker, as for any other message."""
    if len(raw) > TEXT_ONLY_MAX_BYTES:
        return None
    from mailfilter.extract.walk import run

    try:
        return run(bytes(raw), limits, text_only=True)
    except NeedsWorker:
        return None
    except Exception:
        return None  # the worker's walk will record what went wrong
