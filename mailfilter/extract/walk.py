"""The driver: what to do with each node, and the trampoline that walks them all.

A payload is an image if its bytes say so (whatever it is called), a candidate image if it
only claims to be one (the decode stage decides), a container if its bytes (or, failing
that, its declared type or name) say so, and otherwise text to search for hidden payloads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

from mailfilter import magic
from mailfilter.extract import (
    archives,
    audio,
    core,
    libarchive_reader,
    metafile,
    mime,
    openpgp,
    pdf,
    smime,
    sniff,
    sweep,
    textscan,
    tnef,
)
from mailfilter.extract.core import Context, EntityNode, Node, PayloadNode
from mailfilter.model import AttachmentKind, Extraction
from mailfilter.settings import ExtractSettings


def _message(ctx: Context, node: PayloadNode) -> Iterator[Node]:
    """A saved message (.eml, MHTML) met as a payload: walk it as a MIME message."""
    yield EntityNode(
        node.path, (*node.containers, sniff.MESSAGE), node.data, 0, len(node.data), root=True
    )


def _container(ctx: Context, node: PayloadNode, kind: str, quiet: bool) -> Iterator[Node]:
    if kind == sniff.ZIP:
        return archives.zip_members(ctx, node, quiet)
    if kind == sniff.TAR:
        return archives.tar_members(ctx, node, quiet)
    if kind in (sniff.GZIP, sniff.BZIP2, sniff.XZ):
        return archives.compressed_stream(ctx, node, kind, quiet)
    if kind == sniff.SEVEN_ZIP:
        return archives.sevenzip_members(ctx, node, quiet)
    if kind == sniff.RAR:
        return archives.rar_members(ctx, node, quiet)
    if kind in libarchive_reader.ARCHIVE_FORMATS:
        return libarchive_reader.archive_members(ctx, node, kind, quiet)
    if kind in libarchive_reader.STREAM_FILTERS:
        return libarchive_reader.compressed_stream(ctx, node, kind, quiet)
    if kind == sniff.OPENPGP:
        return openpgp.contents(ctx, node, quiet)
    if kind == sniff.PDF:
        return pdf.images(ctx, node, quiet)
    if kind == sniff.TNEF:
        return tnef.attachments(ctx, node, quiet)
    if kind in sniff.AUDIO:
        return audio.pictures(ctx, node, kind, quiet)
    if kind == sniff.PKCS7:
        return smime.content(ctx, node, quiet)
    if kind == sniff.MESSAGE:
        return _message(ctx, node)
    if kind in (sniff.WMF, sniff.EMF):
        return metafile.pictures(ctx, node, kind, quiet)
    ctx.skip(node.path, core.UNSUPPORTED_ARCHIVE, f"{kind} is not supported")
    return iter(())


def payload(ctx: Context, node: PayloadNode) -> Iterator[Node]:
    data = node.data
    ctype = node.content_type
    texty = bool(ctype and ctype.startswith("text/"))
    # (text-only mode: a table of first bytes rules out nearly all text at once)
    maybe = not ctx.text_only or sweep.may_start_file(data)
    image = sniff.image_type(data) if maybe else None
    if image is not None:
        ctx.add_image(node)
        if sniff.find_appended_zip(data):
            yield from archives.appended_zip(
                ctx, replace(node, path=core.container_path(node.path, node.filename))
            )
        else:
            yield from sweep.after_image(ctx, node, image)
        return
    if maybe and magic.video_container(data) is not None:
        # A video: the decode stage samples its frames (it is still carved below, for the
        # cover art an MP4 keeps in its metadata).
        ctx.add_image(node, kind=AttachmentKind.VIDEO)
    elif sniff.declared_image(ctype, node.filename):
        ctx.add_image(node)  # claims to be an image: the decode stage decides
    elif data and not (texty and node.filename is None):
        # Any other file (a video, an archive, a document, a member, a carved piece; a
        # text part only when it is an attached file): its exact hashes are matched.
        # Message bodies (text without a file name) need none.
        ctx.add_file(node)
    kind = sniff.container_type(data, text=texty) if maybe else None
    # a signature met by chance inside other bytes is no corrupt archive
    quiet = ctype == sweep.CARVED
    if kind is None:
        declared = sniff.declared_container(ctype, node.filename)
        if declared == sniff.MESSAGE or (not texty and sniff.looks_like_message(data)):
            kind = sniff.MESSAGE
        elif declared is not None and data:
            kind, quiet = declared, True
    if kind is not None:
        since, opened = len(ctx.unscannable), False
        if ctx.container_allowed(node, kind):
            inner = node
            if kind not in (sniff.MESSAGE, sniff.PKCS7):
                inner = replace(node, path=core.container_path(node.path, node.filename))
            try:
                for child in _container(ctx, inner, kind, quiet):
                    opened = True
                    yield child
            except Exception as exc:  # contained here, so it is filed under the container
                ctx.skip(inner.path, core.PARSE_ERROR, f"{type(exc).__name__}: {exc}"[:300])
        if ctype == sweep.CARVED:
            sweep.forget_reader_failures(ctx, node.path, since)
        if quiet and opened:
            return
        if not quiet:
            yield from sweep.after_failed_container(ctx, node, since)
            return
    if data:
        path = core.container_path(node.path, node.filename)
        yield from textscan.scan(ctx, node if path == node.path else replace(node, path=path))


def open_node(ctx: Context, node: Node) -> Iterator[Node]:
    if isinstance(node, EntityNode):
        return mime.entity(ctx, node)
    assert isinstance(node, PayloadNode)
    return payload(ctx, node)


def run(raw: bytes, limits: ExtractSettings, text_only: bool = False,
        keep: frozenset[str] = frozenset()) -> Extraction:
    """The walk. `text_only`: raise NeedsWorker at the first thing that is not text.
    `keep`: SHA-256s of files whose bytes to return (`Extraction.kept_files`)."""
    ctx = Context(limits)
    ctx.text_only = text_only
    ctx.keep = keep
    ctx.raw = raw
    root = EntityNode("", (), raw, 0, len(raw), root=True)
    # The raw sweep runs after the MIME walk (a stack: last in, first run), over what the
    # walk did not decode.
    stack: list[tuple[Iterator[Node], str]] = [
        (sweep.raw_message(ctx), sweep.SWEEP),
        (open_node(ctx, root), ""),
    ]
    try:
        while stack:
            gen, path = stack[-1]
            try:
                child = next(gen)
            except StopIteration:
                stack.pop()
                continue
            except Exception as exc:
                stack.pop()
                ctx.skip(path, core.PARSE_ERROR, f"{type(exc).__name__}: {exc}"[:300])
                continue
            stack.append((open_node(ctx, child), child.path))
    except core.Stop:
        pass
    finally:
        for gen, _path in reversed(stack):
            close = getattr(gen, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
    return Extraction(
        attachments=tuple(ctx.attachments),
        unscannable=tuple(ctx.unscannable),
        defects=tuple(ctx.defects),
        message_id=ctx.message_id,
        subject=ctx.subject,
        parts=ctx.parts,
        ambiguities=tuple(ctx.ambiguities),
        files=tuple(ctx.files),
        kept_files=tuple(ctx.kept.items()),
    )
