"""Pictures in audio files: the cover art (and embedded files) that players and file managers
show for a music file.

Where audio files keep pictures, read within the message's budgets:

- ID3v2.2/2.3/2.4 tags (MP3, and before FLAC or anything else): APIC/PIC frames (cover
  pictures) and GEOB frames (embedded files), with tag-level unsynchronisation (v2.2/2.3:
  every FF 00 stands for FF), frame-level unsynchronisation and data length indicators
  (v2.4), zlib-compressed frames (inflated within `max_expansion_ratio` and the decoded-byte
  budget), and v2.4 frame sizes written as plain integers by buggy taggers. Encrypted frames
  are unscannable (`encrypted-archive`: a key we do not have). Tags are found at the start,
  one after another, and appended with a v2.4 footer (`3DI`, also before an ID3v1 tag);
  an `ID3` signature elsewhere in unknown binary is found by the sweep's carving.
- FLAC metadata blocks (native `fLaC`, also after an ID3 tag): PICTURE blocks, and
  METADATA_BLOCK_PICTURE / COVERART in the VORBIS_COMMENT block.
- Ogg (Vorbis, Opus, Speex, Theora, FLAC-in-Ogg): pages joined per logical stream into
  packets, as players do, so a comment split over pages is read whole; the header packets of
  each stream (chained streams too) are searched for METADATA_BLOCK_PICTURE (a FLAC picture
  block in base64) and the legacy COVERART (a picture in base64); FLAC-in-Ogg's metadata
  packets are read as FLAC blocks. Page CRCs are not checked (libogg drops a page whose CRC
  is wrong; reading it anyway can only find more).

MP4/M4A `covr` atoms need no reader: they hold the picture's bytes as they are, and the
sweep's carving finds them (tests/extract/test_audio.py checks this). So does it for APEv2
cover items. After the reader, the file is carved like unknown binary (sweep.carve) with the
spans of pictures already handed on blanked out, so a picture elsewhere (in a frame we do not
read, glued after the audio) is not lost.

Why not mutagen, the well-kept tag library of the field: it inflates a compressed ID3 frame
with an uncapped `zlib.decompress` (a 200 KB tag made it allocate 800 MiB), reads from
file objects, and parses every frame type we have no use for; the structures needed here are
few and small, and every size field below is checked against the bytes that are there, so a
lying length never allocates anything.

Names of what is handed on: `picture-N` (APIC/PIC, FLAC PICTURE, METADATA_BLOCK_PICTURE,
COVERART; N counts the file's pictures), a GEOB frame's own filename or `object-N`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

from mailfilter.extract import core, decoders, sniff, sweep
from mailfilter.extract.core import Context, Node, PayloadNode, member_path

# Bounds on the structures one file may have (what real files have is far below these).
MAX_ID3_TAGS = 8  # consecutive tags at the start (broken taggers prepend more than one)
MAX_FRAMES = 4096  # frames per ID3 tag
MAX_FLAC_BLOCKS = 1024  # metadata blocks per FLAC stream
MAX_HEADER_PAGES = 4096  # Ogg pages read for the header packets of all streams of a file
MAX_OGG_STREAMS = 256  # logical streams per Ogg file (chained and multiplexed)
MAX_HEADER_PACKETS = 128  # header packets per Ogg stream (FLAC-in-Ogg: one per metadata block)

# Defect codes.
TRUNCATED = "audio-truncated"  # a tag, block, page or picture cut short by the file's end
CORRUPT = "audio-structure-damaged"  # a structure that stopped being readable part way

_V22_IMAGE_TYPES = {b"JPG": "image/jpeg", b"PNG": "image/png", b"GIF": "image/gif",
                    b"BMP": "image/bmp"}
_FRAME_ID = {2: re.compile(rb"[A-Z0-9]{3}\Z"), 3: re.compile(rb"[A-Z0-9]{4}\Z"),
             4: re.compile(rb"[A-Z0-9]{4}\Z")}
_PICTURE_FRAMES = frozenset({b"APIC", b"PIC", b"GEOB", b"GEO"})
# Vorbis comment fields holding pictures (field names are case-insensitive).
_PICTURE_FIELD = re.compile(rb"(?i)(METADATA_BLOCK_PICTURE|COVERART)=")
_OGG_BOS_PAGE = re.compile(rb"OggS\x00[\x02\x03\x06\x07]")  # a page that starts a stream

FLAC_PICTURE = 6
FLAC_VORBIS_COMMENT = 4


class _Exhausted(Exception):
    """The message's member budget is spent: the reader stops (already recorded)."""


@dataclass(slots=True)
class _Reader:
    """One audio file's reading: where pictures are handed on, what the carve must skip."""

    ctx: Context
    node: PayloadNode
    kids: sweep.Children
    quiet: bool
    pictures: int = 0
    objects: int = 0
    handed: list[tuple[int, int]] = field(default_factory=list)  # raw spans to blank out

    def path(self, name: str) -> str:
        return member_path(self.node.path, name)

    def damaged(self, path: str, detail: str) -> None:
        """A structure that cannot be read: unscannable, unless the file was only carved out
        of other bytes (a signature met by chance), where it is a defect."""
        if self.quiet:
            self.ctx.defect(path, CORRUPT)
        else:
            self.ctx.skip(path, core.CORRUPT_ARCHIVE, detail[:200])

    def hand_on(self, name: str, data: bytes, ctype: str | None, filename: str | None,
                span: tuple[int, int] | None = None) -> Iterator[PayloadNode]:
        if span is not None:
            self.handed.append(span)
        if not data or not self.kids.novel(data):
            return
        if not self.kids.open():
            raise _Exhausted
        if not self.ctx.fits(self.path(name), len(data)):
            return
        yield self.kids.make(name, data, ctype, filename)

    def picture(self, data: bytes, ctype: str | None,
                span: tuple[int, int] | None = None) -> Iterator[PayloadNode]:
        self.pictures += 1
        yield from self.hand_on(f"picture-{self.pictures}", data, ctype, None, span)

    def inflate(self, path: str, packed: bytes) -> bytes | None:
        """A zlib stream inflated within the ratio limit and the budget (None: recorded)."""
        by_ratio = self.ctx.expansion_cap(len(packed))
        cap = min(by_ratio, self.ctx.remaining)
        dec = zlib.decompressobj()
        try:
            out = dec.decompress(packed, cap + 1)
        except zlib.error as exc:
            self.damaged(path, f"compressed ID3 frame: {exc}")
            return None
        if len(out) > cap:
            self.ctx.charge(cap)  # the work done counts: many bombs cannot add up
            if cap == by_ratio:
                self.ctx.skip(path, core.MAX_EXPANSION_RATIO,
                              f"{len(packed)} bytes expand past {by_ratio}")
            else:
                self.ctx.fits(path, self.ctx.remaining + 1)
            return None
        if not dec.eof:
            self.ctx.defect(path, TRUNCATED)
        return out


# --- the entry point ----------------------------------------------------------------------


def pictures(ctx: Context, node: PayloadNode, kind: str, quiet: bool = False) -> Iterator[Node]:
    """The pictures of an audio file that sniff recognised (`kind`: sniff.ID3, FLAC or OGG),
    then what carving finds in the rest of it."""
    reader = _Reader(ctx, node, sweep.Children(ctx, node, kind), quiet)
    data = node.data
    try:
        if kind == sniff.OGG:
            yield from _ogg(reader, data)
        else:
            pos = 0
            if kind == sniff.ID3:
                for _ in range(MAX_ID3_TAGS):
                    if data[pos : pos + 3] != b"ID3":
                        break
                    end = yield from _id3(reader, data, pos)
                    if end is None:
                        break
                    pos = end
                    while pos < len(data) and data[pos] == 0:  # padding after the tag
                        pos += 1
                appended = _appended_id3(data, pos)
                if appended is not None:
                    yield from _id3(reader, data, appended)
            if data[pos : pos + 4] == b"fLaC":
                reader.handed.append((pos, pos + 4))  # (so the carve does not read it again)
                yield from _flac(reader, data, pos)
        yield from sweep.carve(ctx, reader.kids, _blanked(data, reader.handed))
    except _Exhausted:
        return


def _blanked(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    if not spans:
        return data
    out = bytearray(data)
    for start, end in spans:
        end = min(end, len(out))  # (a lying size must not grow the copy)
        if start < end:
            out[start:end] = bytes(end - start)
    return bytes(out)


# --- ID3v2 --------------------------------------------------------------------------------


def _syncsafe(b: bytes) -> int:
    return (b[0] << 21) | (b[1] << 14) | (b[2] << 7) | b[3]


def id3_header(head: bytes) -> tuple[int, int, int] | None:
    """(major version, flags, size) of an ID3v2 tag header, or None if it is none."""
    if len(head) < 10 or head[:3] != b"ID3" or head[3] not in (2, 3, 4) or head[4] == 0xFF:
        return None
    if any(b & 0x80 for b in head[6:10]):
        return None
    return head[3], head[5], _syncsafe(head[6:10])


def _appended_id3(data: bytes, after: int) -> int | None:
    """Where an ID3v2.4 tag appended at the end starts (its footer `3DI` is the last thing
    in the file, or comes just before a 128-byte ID3v1 tag), if it starts at `after` or later."""
    for footer in (len(data) - 10, len(data) - 138):
        if footer < after or data[footer : footer + 3] != b"3DI":
            continue
        found = id3_header(b"ID3" + data[footer + 3 : footer + 10])
        if found is None:
            continue
        start = footer - 10 - found[2]
        if start >= after and data[start : start + 3] == b"ID3":
            return start
    return None


def _unsynchronised(data: bytes) -> bytes:
    """Undo unsynchronisation (ID3v2.3 5., ID3v2.4 6.1): FF 00 stands for FF."""
    return data.replace(b"\xff\x00", b"\xff")


def _id3(r: _Reader, data: bytes, start: int) -> Generator[Node, None, int | None]:
    """The picture frames of the ID3v2 tag at `start`; returns where the tag ends (None if
    there is no tag there after all)."""
    header = id3_header(data[start : start + 10])
    if header is None:
        return None
    if start:
        r.handed.append((start, start + 3))  # (so the carve does not read the tag again)
    version, flags, size = header
    end = start + 10 + size + (10 if version == 4 and flags & 0x10 else 0)
    body = data[start + 10 : start + 10 + size]
    tag_path = r.path(f"id3-{start}") if start else r.node.path
    if len(body) < size:
        r.ctx.defect(tag_path, TRUNCATED)
    if version == 2 and flags & 0x40:
        # ID3v2.2's tag compression was never given a scheme: no reader can read it
        r.ctx.skip(tag_path, core.UNSUPPORTED_ARCHIVE, "ID3v2.2 tag compression")
        return end
    unsync_tag = bool(flags & 0x80)
    # (in v2.2 and v2.3 unsynchronisation covers the whole tag; in v2.4 each frame's data)
    raw_offsets = not (unsync_tag and version < 4)
    if not raw_offsets:
        body = _unsynchronised(body)
        # (carving the raw tag could only find mangled copies of what is read here)
        r.handed.append((start + 10, start + 10 + size))
    pos = 0
    if version >= 3 and flags & 0x40:  # extended header: skipped
        if len(body) < 4:
            r.damaged(tag_path, "ID3 extended header cut short")
            return end
        ext = _syncsafe(body[:4]) if version == 4 else 4 + int.from_bytes(body[:4], "big")
        if ext < 4 or ext > len(body):
            r.damaged(tag_path, f"ID3 extended header of {ext} bytes in a tag of {len(body)}")
            return end
        pos = ext
    id_len, head_len = (3, 6) if version == 2 else (4, 10)
    for _ in range(MAX_FRAMES):
        if pos + head_len > len(body) or body[pos] == 0:  # the end, or padding
            break
        frame_id = body[pos : pos + id_len]
        if not _FRAME_ID[version].match(frame_id):
            r.ctx.defect(tag_path, CORRUPT)
            break
        fsize = _frame_size(body, pos, version)
        fflags = int.from_bytes(body[pos + 8 : pos + 10], "big") if version >= 3 else 0
        fstart, fend = pos + head_len, pos + head_len + fsize
        pos = fend
        if frame_id not in _PICTURE_FRAMES:
            continue
        frame = body[fstart:fend]
        fpath = r.path(f"{frame_id.decode().lower()}-{r.pictures + r.objects + 1}")
        if len(frame) < fsize:
            r.ctx.defect(fpath, TRUNCATED)
        content = _frame_content(r, fpath, frame, version, fflags, unsync_tag)
        if content is None:
            continue
        span = (start + 10 + fstart, start + 10 + fend) if raw_offsets else None
        yield from _picture_frame(r, frame_id, content, span)
    else:
        r.ctx.skip(tag_path, core.MAX_ARCHIVE_MEMBERS, f"more than {MAX_FRAMES} ID3 frames")
    return end


def _frame_size(body: bytes, pos: int, version: int) -> int:
    if version == 2:
        return int.from_bytes(body[pos + 3 : pos + 6], "big")
    raw = body[pos + 4 : pos + 8]
    plain = int.from_bytes(raw, "big")
    if version == 3 or any(b & 0x80 for b in raw):
        return plain
    safe = _syncsafe(raw)
    if safe == plain:
        return safe
    # Some v2.4 writers (iTunes among them) wrote plain sizes: take the reading after which
    # a frame (or padding, or the tag's end) follows, as mutagen and TagLib do.
    if _frame_follows(body, pos + 10 + safe) or not _frame_follows(body, pos + 10 + plain):
        return safe
    return plain


def _frame_follows(body: bytes, at: int) -> bool:
    if at == len(body) or (at < len(body) and body[at] == 0):
        return True
    return bool(_FRAME_ID[4].match(body[at : at + 4]))


def _frame_content(
    r: _Reader, path: str, frame: bytes, version: int, fflags: int, unsync_tag: bool
) -> bytes | None:
    """A frame's content after its flags' extra bytes, unsynchronisation and compression
    (None: encrypted or unreadable, recorded)."""
    if version == 3:
        compressed, encrypted = fflags & 0x0080, fflags & 0x0040
        extra = (4 if compressed else 0) + (1 if encrypted else 0) + (1 if fflags & 0x0020 else 0)
        if encrypted:
            method = frame[extra - 1] if len(frame) >= extra else -1
            r.ctx.skip(path, core.ENCRYPTED_ARCHIVE, f"ID3 frame encrypted (method {method})")
            return None
        content = frame[extra:]
    elif version == 4:
        compressed, encrypted = fflags & 0x0008, fflags & 0x0004
        extra = (1 if fflags & 0x0040 else 0) + (1 if encrypted else 0)
        if encrypted:
            method = frame[extra - 1] if len(frame) >= extra else -1
            r.ctx.skip(path, core.ENCRYPTED_ARCHIVE, f"ID3 frame encrypted (method {method})")
            return None
        if fflags & 0x0001:  # data length indicator
            extra += 4
        content = frame[extra:]
        if fflags & 0x0002 or unsync_tag:
            content = _unsynchronised(content)
    else:
        return frame
    if compressed:
        return r.inflate(path, content)
    return content


def _terminated(data: bytes, pos: int, encoding: int) -> int | None:
    """Where text in `encoding` starting at `pos` ends, past its terminator (None: no end)."""
    if encoding in (1, 2):  # UTF-16: two NULs on a character boundary
        at = pos
        while True:
            at = data.find(b"\x00\x00", at)
            if at < 0:
                return None
            if (at - pos) % 2 == 0:
                return at + 2
            at += 1
    at = data.find(b"\x00", pos)
    return None if at < 0 else at + 1


def _decoded_text(raw: bytes, encoding: int) -> str:
    codec = {0: "latin-1", 1: "utf-16", 2: "utf-16-be", 3: "utf-8"}.get(encoding, "latin-1")
    return raw.decode(codec, "replace").rstrip("\x00").strip()


def _picture_frame(
    r: _Reader, frame_id: bytes, content: bytes, span: tuple[int, int] | None
) -> Iterator[Node]:
    """APIC/PIC: encoding, MIME type (PIC: a 3-letter format), picture type, description,
    picture. GEOB/GEO: encoding, MIME type, filename, description, object."""
    fpath = r.path(f"{frame_id.decode().lower()}-{r.pictures + r.objects + 1}")
    if len(content) < 2:
        r.damaged(fpath, f"{frame_id.decode()} frame of {len(content)} bytes")
        return
    encoding = content[0]
    if frame_id == b"PIC":
        ctype: str | None = _V22_IMAGE_TYPES.get(content[1:4].upper())
        after_type: int | None = 4
    else:
        after_type = _terminated(content, 1, 0)
        ctype = (content[1 : after_type - 1].decode("latin-1").strip().lower() or None
                 if after_type is not None else None)
    if ctype == "-->":  # a link to the picture, not the picture
        return
    if frame_id in (b"APIC", b"PIC"):
        desc_end = None if after_type is None else _terminated(content, after_type + 1, encoding)
        if desc_end is None:
            r.damaged(fpath, f"{frame_id.decode()} frame without the end of its description")
            return
        yield from r.picture(content[desc_end:], ctype, span)
        return
    name_end = None if after_type is None else _terminated(content, after_type, encoding)
    desc_end = None if name_end is None else _terminated(content, name_end, encoding)
    if after_type is None or name_end is None or desc_end is None:
        r.damaged(fpath, f"{frame_id.decode()} frame without the end of its texts")
        return
    r.objects += 1
    filename = _decoded_text(content[after_type:name_end], encoding).replace("/", "_") or None
    yield from r.hand_on(filename or f"object-{r.objects}", content[desc_end:], ctype, filename,
                         span)


# --- FLAC ---------------------------------------------------------------------------------


def flac_picture(block: bytes) -> tuple[bytes, str | None, bool] | None:
    """(picture, MIME type, cut short) of a FLAC PICTURE block (also what
    METADATA_BLOCK_PICTURE holds in base64), or None if it is no picture block."""
    if len(block) < 8:
        return None
    mime_len = int.from_bytes(block[4:8], "big")
    if 8 + mime_len + 4 > len(block):
        return None
    ctype = block[8 : 8 + mime_len].decode("latin-1").strip().lower() or None
    pos = 8 + mime_len
    desc_len = int.from_bytes(block[pos : pos + 4], "big")
    pos += 4 + desc_len + 16
    if pos + 4 > len(block):
        return None
    size = int.from_bytes(block[pos : pos + 4], "big")
    picture = block[pos + 4 : pos + 4 + size]
    if ctype == "-->":
        return None
    return picture, ctype, len(picture) < size


def _flac(r: _Reader, data: bytes, start: int) -> Iterator[Node]:
    """The PICTURE and VORBIS_COMMENT blocks of the FLAC stream at `start` (`fLaC`)."""
    pos = start + 4
    for _ in range(MAX_FLAC_BLOCKS):
        if pos + 4 > len(data):
            r.ctx.defect(r.node.path, TRUNCATED)
            return
        kind, last = data[pos] & 0x7F, data[pos] & 0x80
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        block = data[pos + 4 : pos + 4 + size]
        if len(block) < size:
            r.ctx.defect(r.node.path, TRUNCATED)
        if kind == 127:  # invalid: not metadata any more
            r.ctx.defect(r.node.path, CORRUPT)
            return
        yield from _flac_block(r, kind, block, (pos + 4, pos + 4 + len(block)))
        pos += 4 + size
        if last:
            return
    r.ctx.skip(r.node.path, core.MAX_ARCHIVE_MEMBERS, f"more than {MAX_FLAC_BLOCKS} FLAC blocks")


def _flac_block(r: _Reader, kind: int, block: bytes,
                span: tuple[int, int] | None) -> Iterator[Node]:
    if kind == FLAC_PICTURE:
        found = flac_picture(block)
        if found is None:
            r.damaged(r.path(f"picture-{r.pictures + 1}"), "FLAC PICTURE block unreadable")
            return
        picture, ctype, short = found
        if short:
            r.ctx.defect(r.path(f"picture-{r.pictures + 1}"), TRUNCATED)
        yield from r.picture(picture, ctype, span)
    elif kind == FLAC_VORBIS_COMMENT:
        yield from _comment_pictures(r, block)


# --- Vorbis comments ----------------------------------------------------------------------


def _comment_pictures(r: _Reader, packet: bytes) -> Iterator[Node]:
    """METADATA_BLOCK_PICTURE and COVERART fields of a Vorbis comment (in whatever header
    wraps it). Fields are found by their names, each checked against the length that must
    come just before it, rather than by walking the list from its count: as quick for a
    hostile list of millions of fields, and a broken count or length earlier on hides
    nothing."""
    for m in _PICTURE_FIELD.finditer(packet):
        start = m.start()
        if start < 4:
            continue
        length = int.from_bytes(packet[start - 4 : start], "little")
        if length < m.end() - start:
            continue
        stop = start + length
        path = r.path(f"picture-{r.pictures + 1}")
        if stop > len(packet):
            if length > len(packet):  # no length at all: a name met by chance in a value
                continue
            r.ctx.defect(path, TRUNCATED)
        value = packet[m.end() : stop]
        decoded, _problems = decoders.b64decode(value)  # (forgiving, as players are)
        if m.group(1).upper() == b"COVERART":
            yield from r.picture(decoded, None)
            continue
        found = flac_picture(decoded)
        if found is None:
            r.damaged(path, "METADATA_BLOCK_PICTURE is no FLAC picture block")
            continue
        picture, ctype, short = found
        if short:
            r.ctx.defect(path, TRUNCATED)
        yield from r.picture(picture, ctype)


# --- Ogg ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stream:
    """One logical stream: its packet being joined, and how many header packets to read."""

    pending: bytearray = field(default_factory=bytearray)
    packets: int = 0
    wanted: int = 1  # known after the first packet
    flac: bool = False
    done: bool = False


def _header_packets(first: bytes) -> tuple[int, bool]:
    """How many header packets a stream has, by its first packet (codec), and whether its
    further headers are FLAC metadata blocks."""
    if first.startswith(b"\x7fFLAC") and len(first) >= 9:
        count = int.from_bytes(first[7:9], "big")  # 0: unknown, until the last-block flag
        return 1 + (count or MAX_HEADER_PACKETS), True
    if first.startswith((b"OpusHead", b"Speex   ")):
        return 2, False
    return 3, False  # Vorbis, Theora; anything else: its first three packets


def _ogg(r: _Reader, data: bytes) -> Iterator[Node]:
    """Pages joined per logical stream into packets; the header packets of each stream are
    searched for pictures (pages of audio are skipped by a search for the next stream)."""
    streams: dict[int, _Stream] = {}
    pos, pages = 0, 0
    while True:
        if pos + 27 > len(data):
            if pos < len(data) and b"OggS".startswith(data[pos : pos + 4]):
                r.ctx.defect(r.node.path, TRUNCATED)  # a page header cut short
            break
        if data[pos : pos + 4] != b"OggS":
            nxt = data.find(b"OggS", pos + 1)
            if nxt < 0:
                break
            pos = nxt
            continue
        if streams and all(s.done for s in streams.values()):
            m = _OGG_BOS_PAGE.search(data, pos)  # (a chained stream, with headers of its own)
            if m is None:
                break
            pos = m.start()
            if pos + 27 > len(data):
                break
        if pages >= MAX_HEADER_PAGES:
            r.ctx.skip(r.node.path, core.MAX_ARCHIVE_MEMBERS,
                       f"more than {MAX_HEADER_PAGES} Ogg pages of stream headers")
            return
        pages += 1
        flags = data[pos + 5]
        serial = int.from_bytes(data[pos + 14 : pos + 18], "little")
        nsegs = data[pos + 26]
        lacing = data[pos + 27 : pos + 27 + nsegs]
        body = pos + 27 + nsegs
        total = sum(lacing)
        if len(lacing) < nsegs or body + total > len(data):
            r.ctx.defect(r.node.path, TRUNCATED)
        pos = body + total
        stream = streams.get(serial)
        if stream is None:
            if len(streams) >= MAX_OGG_STREAMS:
                r.ctx.skip(r.node.path, core.MAX_ARCHIVE_MEMBERS,
                           f"more than {MAX_OGG_STREAMS} Ogg streams")
                return
            stream = streams[serial] = _Stream()
        elif flags & 0x02:  # a chained stream that reuses a serial number
            stream = streams[serial] = _Stream()
        if stream.done:
            continue
        # (a header page is read whole here: carving it could only find pieces cut by the
        # page headers of what is joined here)
        r.handed.append((body, min(pos, len(data))))
        if not flags & 0x01 and stream.pending:
            # (a page lost before this one: libogg drops the partial packet; it is read)
            yield from _ogg_packet(r, stream, bytes(stream.pending))
            stream.pending.clear()
        at = body
        for lace in lacing:
            stream.pending += data[at : at + lace]
            at += lace
            if lace < 255 and not stream.done:
                yield from _ogg_packet(r, stream, bytes(stream.pending))
                stream.pending.clear()
    for stream in streams.values():  # packets the file ends inside of
        if stream.pending and not stream.done:
            r.ctx.defect(r.node.path, TRUNCATED)
            yield from _ogg_packet(r, stream, bytes(stream.pending))


def _ogg_packet(r: _Reader, stream: _Stream, packet: bytes) -> Iterator[Node]:
    stream.packets += 1
    if stream.packets == 1:
        stream.wanted, stream.flac = _header_packets(packet)
    elif stream.flac:
        if len(packet) >= 4:
            kind, last = packet[0] & 0x7F, packet[0] & 0x80
            yield from _flac_block(r, kind, packet[4 : 4 + int.from_bytes(packet[1:4], "big")],
                                   None)
            if last:
                stream.done = True
    else:
        yield from _comment_pictures(r, packet)
    if stream.packets >= min(stream.wanted, MAX_HEADER_PACKETS):
        stream.done = True
