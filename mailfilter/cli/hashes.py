"""`mailfilter hashes …`: manage the hash lists (import, add, stats, export, remove).

Wired into the CLI with ``cli.add_command(hashes)``. Options, settings loading (the root
group's --log-* options win over the file) and error handling are those of every command,
from `command_line.py`.

Exit codes: 0 done; 2 an error (unreadable file, unknown format, store unreachable, unknown
list). `import` exits 0 when lines were skipped but something was loaded, 2 when nothing
at all could be loaded (then the list is left as it was).
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from mailfilter import signals
from mailfilter.cli.command_line import (
    EXIT_ERROR,
    EXIT_OK,
    config_option,
    fail,
    handles_errors,
    json_option,
    load_for_command,
)
from mailfilter.matching.backends import open_store
from mailfilter.matching.formats import FORMATS, detect_format, parse_file, parse_stream
from mailfilter.matching.store import (
    BaseHashStore,
    ImportProgress,
    ImportReport,
    StoreStats,
    UnknownList,
)
from mailfilter.settings import Settings

if TYPE_CHECKING:  # fingerprinting is imported only by `add`
    from mailfilter.enrollment import Enrolled

list_option = click.option("--list", "list_name", required=True, help="Name of the list.")


def _settings(config_path: Path | None) -> Settings:
    return load_for_command(config_path).settings


def _store(settings: Settings) -> BaseHashStore:
    return open_store(settings.store)


def _counts(counts: dict[str, int] | Any) -> str:
    parts = [f"{alg} {n:,}" for alg, n in sorted(dict(counts).items()) if n]
    return ", ".join(parts) if parts else "nothing"


@click.group("hashes")
def hashes() -> None:
    """Manage hash lists: import, add, stats, export, remove."""


# --- import ----------------------------------------------------------------------------------


class _Progress:
    """Progress on stderr when it is a terminal: lines, lines/s, counts. Quiet otherwise."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.last = 0.0
        self.shown = False

    def __call__(self, p: ImportProgress) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if p.phase == "parse" and now - self.last < 0.2:
            return
        self.last = now
        rate = p.lines / p.seconds if p.seconds > 0 else 0.0
        phase = {"parse": "reading", "merge": "merging", "write": "writing",
                 "done": "done"}.get(p.phase, p.phase)
        self.stream.write(
            f"\r{phase}: {p.lines:,} lines, {rate:,.0f} lines/s, loaded {p.loaded:,}, "
            f"skipped {p.skipped:,}   "
        )
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def import_text(report: ImportReport, fmt: str, location: str) -> list[str]:
    verb = "replaced" if report.replace else "merged into"
    lines = [
        f"{report.source}: {fmt}, {report.lines:,} lines: loaded {report.loaded_total:,} "
        f"({_counts(report.loaded)}), skipped {report.skipped_total:,}"
    ]
    for reason, n in sorted(report.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  skipped {n:,}: {reason}")
    if report.examples:
        shown = ", ".join(f"{line} ({reason})" for line, reason in report.examples[:5])
        lines.append(f"  first bad lines: {shown}")
    if report.degenerate:
        lines.append(f"  warning: {report.degenerate:,} degenerate hashes refused "
                     "(all zeros, all ones or below the minimum PDQ quality)")
    if report.tombstones:
        lines.append(f"  deletions: {report.tombstones:,} in the file, {report.removed:,} "
                     "entries removed")
    if report.committed:
        dup = f" ({report.duplicates:,} duplicates merged)" if report.duplicates else ""
        lines.append(
            f"list {report.list_name!r} {verb}: now {sum(report.totals.values()):,} entries "
            f"({_counts(report.totals)}){dup}; store version {report.version} ({location})"
        )
    else:
        lines.append(f"list {report.list_name!r} unchanged: {report.not_committed}")
    return lines


@hashes.command("import")
@config_option
@list_option
@click.option("--format", "fmt", default=None, type=click.Choice(list(FORMATS)),
              help="Input format (auto-detected when left out).")
@click.option("--replace", is_flag=True,
              help="Replace the list with the file's entries (default: merge into it).")
@json_option
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@handles_errors
def hashes_import(config_path: Path | None, list_name: str, fmt: str | None, replace: bool,
                  as_json: bool, file: Path) -> None:
    """Load a hash list file into the store (atomically: filters see the old list or the
    new one). Formats: pdq, te-csv, md5, sha1, sha256, hma, ncmec-xml, jsonl."""
    settings = _settings(config_path)
    fmt = fmt or detect_format(file)
    progress = _Progress(sys.stderr)
    with _store(settings) as store:
        try:
            report = store.import_list(
                list_name, f"{file.name} ({fmt})",
                parse_file(file, fmt, pdq_min_quality=settings.match.pdq_min_quality),
                replace=replace, progress_cb=progress,
            )
        finally:
            progress.finish()
        location = f"{store.backend} {store.location}"
    if as_json:
        click.echo(json.dumps({"file": str(file), "format": fmt, **report.to_json()}))
    else:
        click.echo("\n".join(import_text(report, fmt, location)))
    loaded_something = report.committed or report.loaded_total > 0 or report.tombstones > 0
    sys.exit(EXIT_OK if loaded_something else EXIT_ERROR)


# --- add -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnrolledFile:
    """What `add` made of one file (`enrollment.enroll`), or why it could not read it."""

    path: Path
    entries: list[Enrolled] = field(default_factory=list)
    note: str | None = None
    error: str | None = None


def enroll_file(path: Path, settings: Settings) -> EnrolledFile:
    from mailfilter.enrollment import enroll

    try:
        data = path.read_bytes()
    except OSError as exc:
        return EnrolledFile(path, error=f"cannot read: {exc.strerror or exc}")
    made = enroll(data, settings)
    return EnrolledFile(path, made.entries, made.note)


def _enrollment_text(e: EnrolledFile) -> str:
    if e.error:
        return f"{e.path}: error: {e.error}"
    lines = [f"{e.path}:"]
    for entry in e.entries:
        where = f" frame {entry.frame}" if entry.frame else ""
        if isinstance(entry.value, tuple):
            value = f"{len(entry.value)} features (pdq,quality,seconds)"
        else:
            value = entry.value[:64] + ("…" if len(entry.value) > 64 else "")
        lines.append(f"  {entry.algorithm:<9}{value}  {entry.variant}{where}")
    if e.note:
        lines.append(f"  note: {e.note}")
    return "\n".join(lines)


def _jsonl(entries: list[Enrolled], labels: tuple[str, ...]) -> bytes:
    """The entries as our `jsonl` list format: what `add` loads, through the parser an
    import uses (so a video's features become frame rows exactly as an import's do)."""
    return b"".join(
        json.dumps({"algorithm": en.algorithm,
                    "value": list(en.value) if isinstance(en.value, tuple) else en.value,
                    "labels": list(labels)}).encode() + b"\n"
        for en in entries)


@hashes.command("add")
@config_option
@list_option
@click.option("--label", "labels", multiple=True,
              help="Label for the added entries (repeatable).")
@json_option
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@handles_errors
def hashes_add(config_path: Path | None, list_name: str, labels: tuple[str, ...],
               as_json: bool, files: tuple[Path, ...]) -> None:
    """Enroll files the operator holds into a list: exact hashes of each; of an image also
    PDQ and gridhist of it, its trimmed-borders copy and 5% / 10% centre crops; of a video
    its vPDQ."""
    settings = _settings(config_path)
    enrollments = [enroll_file(path, settings) for path in files]
    entries = [en for e in enrollments for en in e.entries]
    failed = any(e.error for e in enrollments)
    report: ImportReport | None = None
    before = 0
    location = ""
    if entries:
        batches = parse_stream(io.BytesIO(_jsonl(entries, labels)), "jsonl",
                               pdq_min_quality=settings.match.pdq_min_quality)
        with _store(settings) as store:
            existing = {info.name: info for info in store.lists()}
            before = existing[list_name].total if list_name in existing else 0
            report = store.import_list(list_name, "added", batches)
            location = f"{store.backend} {store.location}"
    after = sum(report.totals.values()) if report else before
    if as_json:
        for e in enrollments:
            click.echo(json.dumps({
                "file": str(e.path),
                "error": e.error,
                "note": e.note,
                "entries": [{"algorithm": en.algorithm, "value": en.value,
                             "variant": en.variant, "frame": en.frame} for en in e.entries],
            }))
        click.echo(json.dumps({
            "list": list_name, "added": after - before, "total": after,
            "version": report.version if report else None,
        }))
    else:
        for e in enrollments:
            click.echo(_enrollment_text(e))
        if report is not None:
            # (counted as stored: a video's vPDQ is one entry a frame)
            already = report.loaded_total - (after - before)
            click.echo(
                f"list {list_name!r}: {after - before:,} new entries "
                f"({already:,} already there); now {after:,} entries "
                f"({_counts(report.totals)}); store version {report.version} ({location})"
            )
    sys.exit(EXIT_ERROR if failed or report is None else EXIT_OK)


# --- stats, export, remove -------------------------------------------------------------------


def stats_text(stats: StoreStats) -> list[str]:
    lines = [f"backend: {stats.backend} ({stats.location})", f"version: {stats.version}"]
    if not stats.lists:
        lines.append("no lists")
        return lines
    algorithms = signals.NAMES
    width = max(4, *(len(info.name) for info in stats.lists))
    header = f"{'list':<{width}}  {'entries':>11}" + "".join(f"  {a:>10}" for a in algorithms)
    lines.append(header + "  updated               source")
    for info in stats.lists:
        cells = "".join(f"  {info.counts.get(a, 0):>10,}" for a in algorithms)
        updated = info.to_json()["updated"] or "-"
        lines.append(f"{info.name:<{width}}  {info.total:>11,}{cells}  {updated:<20}  "
                     f"{info.source}")
    totals = stats.totals()
    cells = "".join(f"  {totals.get(a, 0):>10,}" for a in algorithms)
    lines.append(f"{'(all)':<{width}}  {sum(totals.values()):>11,}{cells}")
    return lines


@hashes.command("stats")
@config_option
@json_option
@handles_errors
def hashes_stats(config_path: Path | None, as_json: bool) -> None:
    """Sizes per list and algorithm, the store's version and backend."""
    settings = _settings(config_path)
    with _store(settings) as store:
        stats = store.stats()
    if as_json:
        click.echo(json.dumps(stats.to_json()))
    else:
        click.echo("\n".join(stats_text(stats)))


def _export_lines(store: BaseHashStore, list_name: str | None) -> Iterator[str]:
    for entry in store.export(list_name):
        yield json.dumps(entry.to_json(), separators=(",", ":")) + "\n"


@hashes.command("export")
@config_option
@click.option("--list", "list_name", default=None, help="Only this list.")
@handles_errors
def hashes_export(config_path: Path | None, list_name: str | None) -> None:
    """Dump lists as JSON lines (the `jsonl` import format) on stdout."""
    settings = _settings(config_path)
    out = sys.stdout
    with _store(settings) as store:
        buffer: list[str] = []
        try:
            for line in _export_lines(store, list_name):
                buffer.append(line)
                if len(buffer) >= 4096:
                    out.write("".join(buffer))
                    buffer.clear()
            out.write("".join(buffer))
            out.flush()
        except BrokenPipeError:
            # `export | head`: the reader is gone; that is not an error.
            sys.stderr.close()
            sys.exit(EXIT_OK)


@hashes.command("remove")
@config_option
@list_option
@json_option
@handles_errors
def hashes_remove(config_path: Path | None, list_name: str, as_json: bool) -> None:
    """Delete a list from the store."""
    settings = _settings(config_path)
    with _store(settings) as store:
        try:
            removed = store.remove(list_name)
        except UnknownList as exc:
            fail(str(exc))
        version = store.version()
    if as_json:
        click.echo(json.dumps({"list": list_name, "removed": removed, "version": version}))
    else:
        click.echo(f"list {list_name!r} removed ({removed:,} entries); store version {version}")


__all__ = ["enroll_file", "hashes"]
