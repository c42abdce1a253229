"""Decompression bombs in every image format the decoder takes, archive bombs and
pathological MIME structure, each sent through `mailfilter serve` over a real socket: each
ends within the time bound, with a defined reply (250: quarantined, since the suite's policy
holds unscannable mail, with the reason in its record), and the server's memory bounded
(checked after every test)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from email.policy import SMTP

import pytest
from factories import message
from proxy.proxy_harness import KNOWN

from hostile import corpus
from hostile.harness import TIME_BOUND, HostileServer, reasons

BOUNDING = {"zip-bomb", "max-expansion-ratio", "max-decoded-bytes", "max-archive-members"}
HEIF_DECODER = importlib.util.find_spec("pillow_heif") is not None


def _held(server: HostileServer, raw: bytes) -> dict[str, object]:
    """Send; the quarantine record (the message must have been held, not lost or relayed)."""
    result, seconds = server.send(raw)
    assert seconds < TIME_BOUND, f"{seconds:.1f}s"
    assert result.accepted, result
    return server.record(result.reply)


@pytest.mark.parametrize("fmt", sorted(corpus.IMAGE_BOMBS))
def test_image_bomb(server: HostileServer, fmt: str) -> None:
    payload = corpus.IMAGE_BOMBS[fmt]()
    assert len(payload) < 200_000  # small on the wire, huge when decoded
    record = _held(server, corpus.as_message(payload, f"image/{fmt}", f"bomb.{fmt}",
                                             seq=f"bomb-{fmt}"))
    expected = "unsupported-format" if fmt == "heif" and not HEIF_DECODER \
        else "too-many-pixels"
    assert reasons(record) == {expected}
    assert record["verdict"] == "unscannable"


def test_bomb_does_not_hide_a_match(server: HostileServer) -> None:
    msg = message(subject="bomb and match", attachments=[
        ("bomb.png", "image/png", corpus.png_bomb()), ("k.jpg", "image/jpeg", KNOWN)])
    record = _held(server, msg.as_bytes(policy=SMTP))
    assert record["verdict"] == "match"
    assert "too-many-pixels" in reasons(record)


def _relayed_clean(server: HostileServer, raw: bytes, seq: str) -> None:
    result, seconds = server.send(raw)
    assert seconds < TIME_BOUND, f"{seconds:.1f}s"
    assert result.accepted, result
    [got] = server.delivered(seq)
    assert got.startswith(b"X-Mailfilter: clean\r\n")


def test_bomb_just_under_the_pixel_limit(server: HostileServer) -> None:
    """A real 99-megapixel PNG (allowed by max_pixels): decoded reduced, within the time
    and memory bounds; a flat picture has no PDQ (too little information), so it cannot
    match anything: clean."""
    _relayed_clean(server, corpus.as_message(corpus.png_bomb(9949), "image/png", "flat.png",
                                             seq="under-limit"), "under-limit")


def test_animated_gif_with_twenty_thousand_frames(server: HostileServer) -> None:
    """Frames past images.max_frames are not decoded; 1x1 frames are too small to match."""
    _relayed_clean(server, corpus.as_message(corpus.gif_with_many_frames(20000), "image/gif",
                                             "frames.gif", seq="frames"), "frames")


@pytest.mark.parametrize("name", sorted(corpus.ARCHIVE_BOMBS))
def test_archive_bomb(server: HostileServer, name: str) -> None:
    make, ctype, filename = corpus.ARCHIVE_BOMBS[name]
    record = _held(server, corpus.as_message(make(), ctype, filename, seq=f"arch-{name}"))
    found = reasons(record)
    if "deep" in name:
        assert found == {"max-depth"}
    elif name.startswith("tar"):
        assert found == {"max-archive-members"}
    else:
        assert found and found <= BOUNDING, found


STRUCTURES: dict[str, tuple[Callable[..., bytes], str]] = {
    "10000 parts": (corpus.many_parts, "max-parts"),
    "100-deep multipart": (corpus.deep_multipart, "max-depth"),
    "100-deep forwards": (corpus.deep_forwards, "max-depth"),
}


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_pathological_structure(server: HostileServer, name: str) -> None:
    make, reason = STRUCTURES[name]
    record = _held(server, make(seq=f"struct-{name.replace(' ', '-')}"))
    assert reasons(record) == {reason}
