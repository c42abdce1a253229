"""What every container reader shares: recording a container that cannot be read
(`Fail`), naming a member's payload (`member_node`), and a compressed stream handed on as
one payload within the limits (`decompressed_payload`).

Apart from `archives.py` so that the readers built on these (libarchive_reader, pdf,
tnef, smime, openpgp, metafile) need nothing of the archive readers, and archives can
hand formats on to libarchive_reader without a circle.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator

from mailfilter.extract import core
from mailfilter.extract.core import Context, Node, PayloadNode, member_path

__all__ = ["Fail", "decompressed_payload", "member_basename", "member_node"]


class Fail:
    """Records a container that cannot be read: unscannable, or only a defect when the
    container was merely declared (by type or name) and its bytes do not look like one."""

    def __init__(self, ctx: Context, node: PayloadNode, quiet: bool) -> None:
        self.ctx, self.node, self.quiet = ctx, node, quiet

    def __call__(self, reason: str, detail: str) -> None:
        if self.quiet and reason == core.CORRUPT_ARCHIVE:
            self.ctx.defect(self.node.path, "declared-container-unreadable")
        else:
            self.ctx.skip(self.node.path, reason, detail[:200])


def member_basename(name: str) -> str:
    return posixpath.basename(name.replace("\\", "/")) or name


def member_node(node: PayloadNode, kind: str, name: str, data: bytes) -> PayloadNode:
    return PayloadNode(
        member_path(node.path, name), (*node.containers, kind), data, member_basename(name),
        None,
    )


def decompressed_payload(
    ctx: Context, node: PayloadNode, kind: str, quiet: bool,
    inflate: Callable[[bytes, int], tuple[bytes | None, str]], name: str,
) -> Iterator[Node]:
    """A compressed stream's bytes, inflated by `inflate(data, cap)` (None past the cap)
    within the ratio limit and the budget, handed on as one payload called `name`."""
    fail = Fail(ctx, node, quiet)
    by_ratio = ctx.expansion_cap(len(node.data))
    cap = min(by_ratio, ctx.remaining)
    if not ctx.count_member(node.path):
        return
    out, error = inflate(node.data, cap)
    if out is None:
        ctx.charge(cap)  # the work done counts: many bombs in one message cannot add up
        if by_ratio <= ctx.remaining + cap:
            ctx.skip(
                node.path,
                core.MAX_EXPANSION_RATIO,
                f"{len(node.data)} bytes expand past {by_ratio}",
            )
        else:
            ctx.fits(node.path, ctx.remaining + 1)
        return
    if error:
        if not out:
            fail(core.CORRUPT_ARCHIVE, f"{kind}: {error}")
            return
        ctx.defect(node.path, "compressed-stream-truncated")
    ctx.charge(len(out))
    yield member_node(node, kind, name, out)
