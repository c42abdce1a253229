"""Pictures in audio files (extract/audio.py): ID3v2 cover art and embedded files through
unsynchronisation and compression, FLAC picture blocks, Ogg comments split over pages; and
what hostile sizes, bombs and cut files get instead."""

from __future__ import annotations

import base64
import re
import struct
import time
import zlib

import extract_corpus as ec
import pytest

from mailfilter.extract import extract, sniff, sweep
from mailfilter.model import Extraction
from mailfilter.settings import ExtractSettings

LIMITS = ExtractSettings()
JPEG = ec.jpeg(11)
PNG = ec.png(12)
MPEG_FRAME = b"\xff\xfb\x90\x64" + b"\0" * 413  # one silent MPEG-1 Layer III frame


def attached(data: bytes, name: str = "song.mp3", ctype: str = "audio/mpeg",
             limits: ExtractSettings = LIMITS) -> Extraction:
    raw = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"listen\n"),
                                            ec.attachment(ctype, data, name)], "ab"))
    return extract(raw, limits)


def found(ex: Extraction) -> dict[str, str]:
    return {a.mime_path: ec.sha(a.data) for a in ex.attachments}


def shas(ex: Extraction) -> list[str]:
    return sorted(ec.sha(a.data) for a in ex.attachments)


def reasons(ex: Extraction) -> set[tuple[str, str]]:
    return {(u.mime_path, u.reason) for u in ex.unscannable}


# --- builders ---------------------------------------------------------------------------


def syncsafe(n: int) -> bytes:
    return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])


def unsynchronise(data: bytes) -> bytes:
    return re.sub(rb"\xff(?=[\x00\xe0-\xff])|\xff$", b"\xff\x00", data)


def apic(picture: bytes, mime: bytes = b"image/jpeg", encoding: int = 0,
         description: bytes = b"cover\0") -> bytes:
    return bytes([encoding]) + mime + b"\0" + b"\x03" + description + picture


def frame(frame_id: bytes, content: bytes, version: int = 3, flags: int = 0,
          size: int | None = None) -> bytes:
    n = len(content) if size is None else size
    if version == 2:
        return frame_id + n.to_bytes(3, "big") + content
    size_field = syncsafe(n) if version == 4 else struct.pack(">I", n)
    return frame_id + size_field + struct.pack(">H", flags) + content


def tag(frames: bytes, version: int = 3, flags: int = 0, size: int | None = None,
        footer: bool = False) -> bytes:
    n = len(frames) if size is None else size
    head = b"ID3" + bytes([version, 0, flags | (0x10 if footer else 0)]) + syncsafe(n)
    return head + frames + (b"3DI" + head[3:] if footer else b"")


def flac_picture_block(picture: bytes, mime: bytes = b"image/jpeg",
                       size: int | None = None) -> bytes:
    n = len(picture) if size is None else size
    return (struct.pack(">II", 3, len(mime)) + mime + struct.pack(">I", 0)
            + struct.pack(">IIII", 64, 48, 24, 0) + struct.pack(">I", n) + picture)


STREAMINFO = b"\x10\x00\x10\x00" + b"\0" * 6 + b"\x0a\xc4\x40\xf0" + b"\0" * 20


def flac(blocks: list[tuple[int, bytes]], audio: bytes = b"\xff\xf8" + b"\0" * 64) -> bytes:
    out = b"fLaC"
    for n, (kind, body) in enumerate(blocks):
        last = 0x80 if n == len(blocks) - 1 else 0
        out += bytes([last | kind]) + len(body).to_bytes(3, "big") + body
    return out + audio


def vorbis_comment(fields: list[bytes], vendor: bytes = b"test") -> bytes:
    out = struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", len(fields))
    return out + b"".join(struct.pack("<I", len(f)) + f for f in fields)


def picture_field(picture: bytes) -> bytes:
    return b"METADATA_BLOCK_PICTURE=" + base64.b64encode(flac_picture_block(picture))


def ogg_pages(packets: list[bytes], serial: int = 1, segments_per_page: int = 4) -> bytes:
    """Pages carrying `packets` (CRC left zero: it is not checked), long packets split."""
    out = b""
    seq = 0
    for number, packet in enumerate(packets):
        pieces = [packet[i:i + 255] for i in range(0, len(packet), 255)] or [b""]
        if len(pieces[-1]) == 255:
            pieces.append(b"")
        for start in range(0, len(pieces), segments_per_page):
            chunk = pieces[start:start + segments_per_page]
            flags = (0x01 if start else 0) | (0x02 if seq == 0 else 0)
            if number == len(packets) - 1 and start + segments_per_page >= len(pieces):
                flags |= 0x04
            out += (b"OggS\0" + bytes([flags]) + struct.pack("<qII", 0, serial, seq)
                    + b"\0" * 4 + bytes([len(chunk)]) + bytes(len(p) for p in chunk)
                    + b"".join(chunk))
            seq += 1
    return out


OPUS_HEAD = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", 312, 48000, 0, 0)


def opus(fields: list[bytes], serial: int = 1, audio_packets: int = 0) -> bytes:
    tags = b"OpusTags" + vorbis_comment(fields)
    return ogg_pages([OPUS_HEAD, tags] + [b"\xfc" + bytes(40)] * audio_packets, serial)


# --- ID3v2 ------------------------------------------------------------------------------


def test_id3v23_cover_is_handed_on_once() -> None:
    ex = attached(tag(frame(b"APIC", apic(JPEG))) + MPEG_FRAME)
    assert found(ex) == {"2/song.mp3/picture-1": ec.sha(JPEG)}
    assert ex.attachments[0].containers == (sniff.ID3,)
    assert ex.attachments[0].content_type == "image/jpeg"
    assert not ex.unscannable


def test_id3v23_unsynchronised_tag() -> None:
    body = unsynchronise(frame(b"APIC", apic(JPEG)))
    assert JPEG[:4] not in body  # (FF E0 became FF 00 E0: carving cannot read it)
    ex = attached(tag(body, flags=0x80) + MPEG_FRAME)
    assert shas(ex) == [ec.sha(JPEG)]


@pytest.mark.parametrize("version", [3, 4])
def test_compressed_frame(version: int) -> None:
    content = apic(PNG, b"image/png")
    packed = zlib.compress(content)
    if version == 3:  # decompressed size, then the zlib stream
        f = frame(b"APIC", struct.pack(">I", len(content)) + packed, 3, 0x0080)
    else:  # compression needs the data length indicator
        f = frame(b"APIC", syncsafe(len(content)) + packed, 4, 0x0008 | 0x0001)
    ex = attached(tag(f, version) + MPEG_FRAME)
    assert shas(ex) == [ec.sha(PNG)]


def test_id3v24_frame_unsynchronisation_with_data_length_indicator() -> None:
    content = apic(JPEG)
    f = frame(b"APIC", syncsafe(len(content)) + unsynchronise(content), 4, 0x0002 | 0x0001)
    ex = attached(tag(frame(b"TIT2", b"\x03title\0", 4) + f, 4) + MPEG_FRAME)
    assert shas(ex) == [ec.sha(JPEG)]


def test_id3v24_tag_flag_unsynchronises_every_frame() -> None:
    content = apic(JPEG)
    f = frame(b"APIC", unsynchronise(content), 4)
    ex = attached(tag(f, 4, flags=0x80) + MPEG_FRAME)
    assert shas(ex) == [ec.sha(JPEG)]


def test_id3v24_frame_sizes_written_as_plain_integers() -> None:
    """iTunes wrote v2.4 frame sizes as plain integers: read as a syncsafe size, the next
    frame would not start where it must."""
    content = apic(JPEG)
    plain = frame(b"APIC", content, 4)
    plain = plain[:4] + struct.pack(">I", len(content)) + plain[8:]
    assert any(b & 0x80 for b in plain[4:8]) or plain[4:8] != syncsafe(len(content))
    ex = attached(tag(plain + frame(b"TIT2", b"\x03x\0", 4), 4) + MPEG_FRAME)
    assert shas(ex) == [ec.sha(JPEG)]


def test_id3v22_pic_frame_and_utf16_description() -> None:
    description = "Hülle".encode("utf-16") + b"\0\0"
    content = bytes([1]) + b"PNG" + b"\x03" + description + PNG
    ex = attached(tag(frame(b"PIC", content, 2), 2) + MPEG_FRAME)
    assert shas(ex) == [ec.sha(PNG)]


def test_utf16_description_whose_terminator_straddles_characters() -> None:
    """"\\u0100" is 00 01 in UTF-16BE: the NUL pair must sit on a character boundary."""
    description = "\u0100\u0100".encode("utf-16-be") + b"\0\0"
    ex = attached(tag(frame(b"APIC", apic(JPEG, encoding=2, description=description)))
                  + MPEG_FRAME)
    assert shas(ex) == [ec.sha(JPEG)]


def test_extended_header_is_skipped() -> None:
    ext = struct.pack(">I", 6) + b"\0\0" + b"\0\0\0\0"  # v2.3: size excludes itself
    ex = attached(tag(ext + frame(b"APIC", apic(JPEG)), flags=0x40) + MPEG_FRAME)
    assert shas(ex) == [ec.sha(JPEG)]


def test_geob_frame_is_handed_on_under_its_filename() -> None:
    inner = ec.zip_bytes({"in.png": PNG})
    content = b"\0" + b"application/zip\0" + b"pics.zip\0" + b"some files\0" + inner
    ex = attached(tag(frame(b"GEOB", content)) + MPEG_FRAME)
    assert found(ex) == {"2/song.mp3/pics.zip/in.png": ec.sha(PNG)}


def test_encrypted_frame_is_unscannable() -> None:
    f = frame(b"APIC", b"\x80" + bytes(200), 3, 0x0040)
    ex = attached(tag(f) + MPEG_FRAME)
    assert reasons(ex) == {("2/song.mp3/apic-1", "encrypted-archive")}


def test_link_instead_of_picture_is_no_payload() -> None:
    ex = attached(tag(frame(b"APIC", apic(b"http://example.org/c.jpg", b"-->"))) + MPEG_FRAME)
    assert not ex.attachments and not ex.unscannable


def test_appended_id3v24_tag_with_footer() -> None:
    data = MPEG_FRAME * 3 + tag(frame(b"APIC", apic(PNG, b"image/png"), 4), 4, footer=True)
    assert shas(attached(data)) == [ec.sha(PNG)]
    id3v1 = b"TAG" + bytes(125)
    assert shas(attached(data + id3v1)) == [ec.sha(PNG)]


def test_id3_tag_after_audio_is_found_by_the_sweep() -> None:
    """An MP3 that starts with audio: the carving's `ID3` signature finds the tag, and the
    audio reader reads it (compressed: no picture signature to carve)."""
    content = apic(JPEG)
    f = frame(b"APIC", struct.pack(">I", len(content)) + zlib.compress(content), 3, 0x0080)
    ex = attached(MPEG_FRAME * 2 + tag(f) + MPEG_FRAME)
    assert shas(ex) == [ec.sha(JPEG)]


def test_picture_glued_after_the_audio_is_still_carved() -> None:
    ex = attached(tag(frame(b"APIC", apic(JPEG))) + MPEG_FRAME + PNG)
    assert shas(ex) == sorted([ec.sha(JPEG), ec.sha(PNG)])


def test_two_tags_one_after_another() -> None:
    data = (tag(frame(b"APIC", apic(JPEG))) + b"\0" * 10
            + tag(unsynchronise(frame(b"APIC", apic(PNG, b"image/png"))), flags=0x80)
            + MPEG_FRAME)
    assert shas(attached(data)) == sorted([ec.sha(JPEG), ec.sha(PNG)])


# --- lying sizes, bombs, cut files ---------------------------------------------------------


def test_frame_size_past_the_tag() -> None:
    f = frame(b"APIC", apic(JPEG), size=0x7FFFFFFF)
    ex = attached(tag(f) + MPEG_FRAME)
    assert ex.attachments  # what is there is handed on, the decode stage judges it
    assert any(d.startswith("audio-truncated") for d in ex.defects)


def test_tag_size_past_the_file() -> None:
    ex = attached(tag(frame(b"APIC", apic(JPEG)), size=(1 << 28) - 1))
    assert shas(ex) == [ec.sha(JPEG)]
    assert any(d.startswith("audio-truncated") for d in ex.defects)


def test_extended_header_size_past_the_tag() -> None:
    ext = struct.pack(">I", 0x7FFFFFF0)
    ex = attached(tag(ext + frame(b"APIC", apic(JPEG)), flags=0x40) + MPEG_FRAME)
    assert ("2/song.mp3", "corrupt-archive") in reasons(ex)


def test_compressed_frame_bomb_is_refused_within_the_ratio() -> None:
    content = apic(b"\0" * (64 << 20))
    packed = zlib.compress(content, 9)
    f = frame(b"APIC", struct.pack(">I", len(content)) + packed, 3, 0x0080)
    started = time.monotonic()
    ex = attached(tag(f) + MPEG_FRAME)
    assert time.monotonic() - started < 5
    assert ("2/song.mp3/apic-1", "max-expansion-ratio") in reasons(ex)
    assert not ex.attachments


def test_compressed_frame_past_the_budget() -> None:
    content = apic(JPEG + bytes(200_000))
    f = frame(b"APIC", struct.pack(">I", len(content)) + zlib.compress(content), 3, 0x0080)
    ex = attached(tag(f) + MPEG_FRAME, limits=ExtractSettings(max_decoded_bytes=150_000))
    assert "max-decoded-bytes" in {u.reason for u in ex.unscannable}


def test_corrupt_compressed_frame() -> None:
    f = frame(b"APIC", struct.pack(">I", 1000) + b"not zlib at all", 3, 0x0080)
    ex = attached(tag(f) + MPEG_FRAME)
    assert ("2/song.mp3/apic-1", "corrupt-archive") in reasons(ex)


def test_many_frames_are_bounded() -> None:
    frames = frame(b"TXXX", b"\0a\0b") * 5000 + frame(b"APIC", apic(JPEG))
    ex = attached(tag(frames) + MPEG_FRAME)
    assert ("2/song.mp3", "max-archive-members") in reasons(ex)


def test_flac_picture_size_past_the_block() -> None:
    block = flac_picture_block(JPEG, size=0xFFFFFFFF)
    ex = attached(flac([(0, STREAMINFO), (6, block)]), "a.flac", "audio/flac")
    assert shas(ex) == [ec.sha(JPEG)]  # (the picture ends the file's block: all of it is there)
    assert any(d.startswith("audio-truncated") for d in ex.defects)


def test_flac_block_length_past_the_file() -> None:
    data = b"fLaC" + b"\x00" + (34).to_bytes(3, "big") + STREAMINFO + b"\x86\xff\xff\xff" + b"x"
    ex = attached(data, "a.flac", "audio/flac")
    assert not ex.attachments
    assert any(d.startswith("audio-truncated") for d in ex.defects)


def test_cut_opus_file_hands_on_what_is_there() -> None:
    data = opus([picture_field(JPEG)])
    for cut in (60, 200, len(data) // 2, len(data) - 3):
        ex = attached(data[:cut], "a.opus", "audio/ogg")
        assert any(d.startswith("audio-truncated") for d in ex.defects), cut
        assert all(u.reason in ("truncated", "corrupt-archive") for u in ex.unscannable), cut


def test_ogg_page_storm_is_bounded() -> None:
    """Pages of one lacing value each, all continuing one header packet."""
    head = ogg_pages([OPUS_HEAD])
    page = b"OggS\0\x01" + struct.pack("<qII", 0, 1, 1) + b"\0" * 4 + b"\x01\xff" + b"A" * 255
    data = head + page * 20_000
    started = time.monotonic()
    ex = attached(data, "a.opus", "audio/ogg")
    assert time.monotonic() - started < 10
    assert ("2/a.opus", "max-archive-members") in reasons(ex)


def test_random_bytes_after_headers_never_raise() -> None:
    import random

    rng = random.Random(5)
    heads = [b"ID3\x03\x00\x00", b"ID3\x04\x00\x80", b"fLaC\x00\x00\x00\x22", b"OggS\x00\x02"]
    for _ in range(300):
        data = rng.choice(heads) + rng.randbytes(rng.randrange(0, 3000))
        ex = attached(data)
        assert not any(u.reason == "parse-error" for u in ex.unscannable), data[:16]


# --- FLAC -------------------------------------------------------------------------------


def test_flac_picture_block() -> None:
    ex = attached(flac([(0, STREAMINFO), (6, flac_picture_block(PNG, b"image/png"))]),
                  "a.flac", "audio/flac")
    assert found(ex) == {"2/a.flac/picture-1": ec.sha(PNG)}
    assert ex.attachments[0].containers == (sniff.FLAC,)


def test_flac_vorbis_comment_picture_and_coverart() -> None:
    comment = vorbis_comment([b"TITLE=x", picture_field(JPEG),
                              b"COVERART=" + base64.b64encode(PNG), b"COVERARTMIME=image/png"])
    ex = attached(flac([(0, STREAMINFO), (4, comment)]), "a.flac", "audio/flac")
    assert shas(ex) == sorted([ec.sha(JPEG), ec.sha(PNG)])


def test_flac_after_an_id3_tag() -> None:
    data = tag(frame(b"APIC", apic(JPEG))) + flac([(0, STREAMINFO),
                                                   (6, flac_picture_block(PNG, b"image/png"))])
    ex = attached(data, "a.flac", "audio/flac")
    assert shas(ex) == sorted([ec.sha(JPEG), ec.sha(PNG)])


# --- Ogg --------------------------------------------------------------------------------


def test_opus_picture_split_over_pages() -> None:
    data = opus([b"TITLE=x", picture_field(JPEG)])
    assert data.count(b"OggS") > 3
    ex = attached(data, "a.opus", "audio/ogg")
    assert found(ex) == {"2/a.opus/picture-1": ec.sha(JPEG)}
    assert ex.attachments[0].containers == (sniff.OGG,)
    assert not ex.unscannable and not ex.defects


def test_vorbis_comment_header_and_legacy_coverart() -> None:
    ident = b"\x01vorbis" + bytes(23)
    comment = b"\x03vorbis" + vorbis_comment([b"coverart=" + base64.b64encode(PNG)]) + b"\x01"
    setup = b"\x05vorbis" + bytes(100)
    data = ogg_pages([ident, comment, setup, bytes(50)])
    assert shas(attached(data, "a.ogg", "audio/ogg")) == [ec.sha(PNG)]


def test_flac_in_ogg_picture_packet() -> None:
    first = b"\x7fFLAC\x01\x00\x00\x02" + b"fLaC" + b"\x00" + (34).to_bytes(3, "big") + STREAMINFO
    comment = vorbis_comment([b"TITLE=x"])
    pic = flac_picture_block(JPEG)
    packets = [first, b"\x04" + len(comment).to_bytes(3, "big") + comment,
               b"\x86" + len(pic).to_bytes(3, "big") + pic, b"\xff\xf8" + bytes(30)]
    assert shas(attached(ogg_pages(packets), "a.oga", "audio/ogg")) == [ec.sha(JPEG)]


def test_chained_opus_streams_each_with_a_cover() -> None:
    data = opus([picture_field(JPEG)], 1, audio_packets=50) + opus([picture_field(PNG)], 2)
    assert shas(attached(data, "a.opus", "audio/ogg")) == sorted([ec.sha(JPEG), ec.sha(PNG)])


def test_multiplexed_streams_pages_interleaved() -> None:
    a = opus([picture_field(JPEG)], 1).split(b"OggS")[1:]
    b = opus([picture_field(PNG)], 2).split(b"OggS")[1:]
    pages = [p for pair in zip(a, b, strict=False) for p in pair]
    pages += a[len(b):] + b[len(a):]
    data = b"".join(b"OggS" + p for p in pages)
    assert shas(attached(data, "a.opus", "audio/ogg")) == sorted([ec.sha(JPEG), ec.sha(PNG)])


# --- what needs no reader, and the text-only gate -----------------------------------------------


def _atom(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def test_m4a_covr_atom_is_found_by_the_sweep() -> None:
    covr = _atom(b"covr", _atom(b"data", struct.pack(">II", 13, 0) + JPEG))
    meta = _atom(b"meta", b"\0\0\0\0" + _atom(b"ilst", covr))
    data = (_atom(b"ftyp", b"M4A \0\0\0\0M4A mp42isom") + _atom(b"moov", _atom(b"udta", meta))
            + _atom(b"mdat", bytes(100)))
    # The M4A itself goes to the decode stage as a video candidate (it finds no video in
    # it: a file with exact hashes); its cover picture is carved out of it.
    assert shas(attached(data, "a.m4a", "audio/mp4")) == sorted([ec.sha(data), ec.sha(JPEG)])


@pytest.mark.parametrize("data", [
    tag(frame(b"APIC", apic(JPEG))), flac([(0, STREAMINFO)]), opus([b"TITLE=x"]),
], ids=["id3", "flac", "ogg"])
def test_the_gate_lets_audio_through(data: bytes) -> None:
    assert sweep.kind_at_start(data) in sniff.AUDIO
    for size in (10, 16, 64, len(data)):
        if sweep.kind_at_start(data[:size]) is not None:
            assert sweep.may_start_file(data[:size])
