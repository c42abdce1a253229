"""`mailfilter quarantine …`: inspect and act on quarantined messages.

    list     entries (this instance's, and with a shared Redis every instance's)
    show     one entry's metadata, matches and history (never the message or images)
    release  deliver the original message to its original recipients via the next hop
    delete   remove an entry's message (the record stays until purged)
    hold     put an entry on legal hold (purge and delete leave it alone); unhold
    purge    remove entries older than quarantine.retention_days, except held ones
    report   the entry's report as JSON or as a CyberTipline-shaped XML draft
    submit   file the entry's CyberTipline report with NCMEC (resumable, idempotent)
    export   write the raw message to a file (0600)
    reindex  rebuild this instance's part of the shared quarantine index

Exit codes: 0 done; 1 no such entry here (not found, or held by another instance: the
message says which); 2 an error or a refusal (bad settings, an entry on legal hold, a file
that exists, a release the next hop refused, Redis unreachable for `reindex`).

Every command that reads or changes an entry (all but `list`) is appended to the audit
log with the operator's name: `--by NAME`, else $SUDO_USER, else $USER.

The work (and the audit log) is `actions/quarantine_service.py`'s: these commands parse
their arguments, call it, and print what it did.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal, NoReturn

import click

from mailfilter.actions.cybertip_submit import (
    already,
    check_reportable,
    cybertip_line,
    submit_entry,
)
from mailfilter.actions.deliver import valid_actor
from mailfilter.actions.preservation import report_id_of
from mailfilter.actions.quarantine import STATUSES, StoredEntry
from mailfilter.actions.quarantine_service import (
    JobState,
    NotHere,
    QuarantineService,
    Refused,
)
from mailfilter.actions.records import EntrySummary
from mailfilter.actions.report.text import findings_text, printable, size_text
from mailfilter.cli.command_line import (
    EXIT_ERROR,
    EXIT_OK,
    config_option,
    counted,
    fail,
    handles_errors,
    json_option,
    load_for_command,
)

__all__ = ["EXIT_NOT_HERE", "parse_since", "quarantine"]

EXIT_NOT_HERE = 1

by_option = click.option(
    "--by", "by", default=None, metavar="NAME",
    help="Who is acting, for the audit log and the record (default: $SUDO_USER, $USER).")
yes_option = click.option("--yes", "-y", is_flag=True,
                          help="Do not ask for confirmation (needed when not on a terminal).")


@click.group("quarantine")
def quarantine() -> None:
    """Inspect and act on quarantined messages (never shows message or image content).

    Exit 0 done, 1 no such entry on this instance, 2 an error or a refusal.
    """


# --- shared helpers ---------------------------------------------------------------------------


def _open(config_path: Path | None) -> QuarantineService:
    return QuarantineService(load_for_command(config_path).settings, _warn)


@contextlib.contextmanager
def _outcomes() -> Iterator[None]:
    """The service's refusals as exit 2, an entry not here as exit 1, with its message."""
    try:
        yield
    except NotHere as exc:
        _not_here(str(exc))
    except Refused as exc:
        fail(str(exc))


def _locate(service: QuarantineService, entry_id: str) -> StoredEntry:
    with _outcomes():
        return service.locate(entry_id)
    raise AssertionError("unreachable")  # (fail and _not_here exit)


def _actor(by: str | None) -> str:
    name = by or os.environ.get("SUDO_USER") or os.environ.get("USER")
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = f"uid-{os.getuid()}"
    if not valid_actor(name):
        fail(f"--by {name!r}: expected a name of letters, digits, spaces and .@+-_ "
             "(at most 64 characters)")
    return name


def _not_here(message: str) -> NoReturn:
    click.echo(f"mailfilter: {message}", err=True)
    sys.exit(EXIT_NOT_HERE)


def _warn(message: str) -> None:
    click.echo(f"mailfilter: warning: {message}", err=True)


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        fail(f"not a terminal: add --yes to {question}")
    if not click.confirm(f"{question[0].upper()}{question[1:]}?", err=True):
        fail("nothing done")


def _write_new_file(path: Path, data: bytes, force: bool) -> None:
    """`data` into a new file readable only by its owner; an existing file is an error
    unless `force` (then it is replaced, and made 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        fail(f"{path}: exists (add --force to overwrite it)")
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_since(text: str, now: float) -> float:
    """`--since`: a date (2025-01-31, UTC), a time (2025-01-31T12:00, UTC unless it says
    otherwise) or a duration before now (90m, 12h, 7d, 2w)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[m.group(2)]
        return now - float(m.group(1)) * unit
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            "expected a date (2025-01-31), a time (2025-01-31T12:00) or a duration such as "
            "7d, 12h, 30m") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


@contextlib.contextmanager
def _reader_may_go_away() -> Iterator[None]:
    """`list | head`: a reader that stops reading is not an error."""
    try:
        yield
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(EXIT_OK)


class _Progress:
    """A count on stderr while a long pass runs, on a terminal only."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.enabled = sys.stderr.isatty()
        self.count = 0
        self.last = 0.0

    def step(self) -> None:
        self.count += 1
        now = time.monotonic()
        if self.enabled and now - self.last > 0.2:
            self.last = now
            sys.stderr.write(f"\r{self.what}: {self.count:,}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.last:
            sys.stderr.write("\r" + " " * (len(self.what) + 16) + "\r")
            sys.stderr.flush()


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]],
           caps: Mapping[int, int]) -> list[str]:
    cells = [[_short(printable(c), caps.get(i, 200)) for i, c in enumerate(row)]
             for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in cells]
    return out


def _when(summary: EntrySummary) -> str:
    ts = summary.received_ts
    if ts is None:
        return str(summary.received or "?")
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _status_cell(s: EntrySummary) -> str:
    flags = [str(s.status)]
    if s.legal_hold:
        flags.append("HOLD")
    if s.report_pending:
        flags.append("report pending")
    return ", ".join(flags)


def _recipients_cell(to: Sequence[str]) -> str:
    if not to:
        return "-"
    return to[0] + (f" +{len(to) - 1}" if len(to) > 1 else "")


# --- list -----------------------------------------------------------------------------------


@quarantine.command("list")
@config_option
@json_option
@click.option("--since", default=None, metavar="WHEN",
              help="Only entries received since WHEN: 2025-01-31, 2025-01-31T12:00 (UTC), "
              "or a duration ago such as 7d, 12h, 30m.")
@click.option("--list", "list_name", default=None, metavar="NAME",
              help="Only entries with a match in this hash list.")
@click.option("--status", type=click.Choice(STATUSES), default=None,
              help="Only entries with this status.")
@click.option("--held", is_flag=True, help="Only entries on legal hold.")
@click.option("--host", default=None, help="Only entries held by this instance.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the newest N entries.")
@handles_errors
def list_command(config_path: Path | None, as_json: bool, since: str | None,
                 list_name: str | None, status: str | None, held: bool, host: str | None,
                 limit: int | None) -> None:
    """List quarantined messages, oldest first (with a shared Redis: every instance's).

    --json prints one object per line: id, host, received, received_ts, status,
    legal_hold, from, to, subject, size, verdict, reason, lists, matches,
    report_pending, message_held.
    """
    service = _open(config_path)
    cutoff = parse_since(since, time.time()) if since else None
    progress = _Progress("reading entries")
    rows = [
        s for s in service.summaries(progress.step, progress.done)
        if (cutoff is None or float(s.received_ts or 0) >= cutoff)
        and (list_name is None or list_name in s.lists)
        and (status is None or s.status == status)
        and (not held or s.legal_hold)
        and (host is None or s.host == host)
    ]
    if limit is not None:
        rows = rows[-limit:]
    if as_json:
        with _reader_may_go_away():
            for s in rows:
                click.echo(json.dumps(s.to_json(), ensure_ascii=False))
        return
    if not rows:
        click.echo("no quarantined messages" + (" match the filters" if any(
            (since, list_name, status, held, host)) else ""))
        return
    headers = ["ID", "RECEIVED (UTC)", "HOST", "STATUS", "FROM", "TO", "LISTS", "SUBJECT"]
    table = [[s.id, _when(s), str(s.host or "?"), _status_cell(s), str(s.from_ or "<>"),
              _recipients_cell(s.to), ",".join(s.lists) or str(s.reason or "-"),
              str(s.subject or "")]
             for s in rows]
    with _reader_may_go_away():
        for line in _table(headers, table, {4: 32, 5: 32, 6: 24, 7: 40}):
            click.echo(line)
    held_count = sum(1 for s in rows if s.legal_hold)
    pending = sum(1 for s in rows if s.report_pending)
    click.echo(f"{counted(len(rows), 'entry', 'entries')} ({held_count} on legal hold, "
               f"{pending} with reports pending)")


# --- show -----------------------------------------------------------------------------------


def _detail_text(value: object) -> str:
    return printable(value if not isinstance(value, list) else ",".join(map(str, value)))


def show_text(entry: StoredEntry, jobs: Sequence[JobState]) -> list[str]:
    r = entry.record
    client, envelope = r.client, r.envelope
    p = printable
    hold = "yes" if r.legal_hold else "no"
    lines = [
        f"entry {entry.id} on {p(r.host)}",
        f"  status      {r.status}; legal hold: {hold}",
        f"  received    {r.received_at} via {p(r.front_end or '?')}",
        f"  client      {p(client.name or 'unknown')} [{p(client.addr or '?')}]"
        f", HELO {p(client.helo or '-')}, queue id {p(r.queue_id or '-')}",
        f"  sender      {p(envelope.mail_from or '<>')}",
        f"  recipients  {', '.join(p(x) for x in envelope.rcpt_tos)}",
        f"  message-id  {p(r.message_id or '-')}",
        f"  subject     {p(r.subject or '')}",
        f"  size        {size_text(r.size)}; message held: "
        f"{'yes' if entry.has_message else 'no (deleted)'}",
        f"  verdict     {r.verdict}: {r.action} ({r.reason}; policy "
        + ", ".join(f"{k} = {v}" for k, v in r.policy.items()) + ")",
    ]
    tip = cybertip_line(r)
    if tip is not None:
        lines.append(f"  cybertip    {p(tip)}")
    for job in jobs:
        state = f"pending: {', '.join(job.waiting)}"
        if job.attempts:
            state += (f" (attempt {job.attempts} failed: {p(job.last_error)}; next "
                      f"try {job.next_attempt})")
        lines.append(f"  report      {state}")
    lines += findings_text(r.attachments, r.matches, r.unscannable)
    lines.append("history")
    for h in r.history:
        detail = " ".join(f"{k}={_detail_text(v)}" for k, v in h.detail.items())
        lines.append(f"  {h.time}  {h.event:<16} by {p(h.by)}"
                     + (f"  {detail}" if detail else ""))
    return lines


@quarantine.command("show")
@config_option
@json_option
@by_option
@click.argument("entry_id", metavar="ID")
@handles_errors
def show_command(config_path: Path | None, as_json: bool, by: str | None,
                 entry_id: str) -> None:
    """Show an entry's metadata, matches and history (never its message or images)."""
    service = _open(config_path)
    actor = _actor(by)
    entry = _locate(service, entry_id)
    jobs = service.show(entry, actor)
    if as_json:
        click.echo(json.dumps({**entry.record.to_json(), "message_held": entry.has_message,
                               "report_pending": bool(jobs),
                               "cybertip_report_id": report_id_of(entry.record),
                               "outbox": [j.to_json() for j in jobs]},
                              ensure_ascii=False))
    else:
        click.echo("\n".join(show_text(entry, jobs)))


# --- release --------------------------------------------------------------------------------


@quarantine.command("release")
@config_option
@by_option
@yes_option
@click.option("--force", is_flag=True, help="Release again an entry already released.")
@click.argument("entry_id", metavar="ID")
@handles_errors
def release_command(config_path: Path | None, by: str | None, yes: bool, force: bool,
                    entry_id: str) -> None:
    """Deliver the original message to its original recipients through the next hop.

    The original envelope is used (sender, recipients, DSN and other parameters) and one
    header is added: X-Mailfilter-Released: by NAME at TIME (id ID). Exit 0 when every
    recipient got it, 2 when the next hop refused any (or could not be reached).
    """
    service = _open(config_path)
    actor = _actor(by)
    entry = _locate(service, entry_id)
    with _outcomes():
        done = service.release(entry, actor, force, lambda q: _confirm(q, yes))
    if done.delivery.delivered:
        click.echo(f"released {done.entry.id} to {', '.join(done.delivery.accepted)} "
                   f"({done.reply})")
        record = done.entry.record
        if record.front_end == "milter" and record.queue_id:
            # The MTA's copy is still on hold (SMFIR_QUARANTINE): docs/milter.md
            click.echo(f"Postfix still holds its own copy: delete it with `postsuper -d "
                       f"{printable(record.queue_id)} hold` (never release it too)", err=True)
    for addr, why in done.refused.items():
        click.echo(f"not released to {addr}: {why}", err=True)
    if not done.delivery.delivered and done.delivery.reply is not None:
        click.echo(f"not released: next hop answered {done.reply}", err=True)
    sys.exit(EXIT_OK if done.result == "ok" else EXIT_ERROR)


# --- delete, hold, unhold ----------------------------------------------------------------------


@quarantine.command("delete")
@config_option
@by_option
@yes_option
@click.argument("entry_id", metavar="ID")
@handles_errors
def delete_command(config_path: Path | None, by: str | None, yes: bool, entry_id: str) -> None:
    """Delete an entry's message. Its record (metadata, hashes, history) stays until
    purge removes it; an entry on legal hold cannot be deleted."""
    service = _open(config_path)
    actor = _actor(by)
    entry = _locate(service, entry_id)
    with _outcomes():
        deleted = service.delete(entry, actor, lambda q: _confirm(q, yes))
    if deleted:
        click.echo(f"deleted the message of {entry.id} (its record stays until purged)")
    else:
        click.echo(f"{entry.id}: already deleted")


def _set_hold(config_path: Path | None, by: str | None, entry_id: str, hold: bool,
              reason: str | None) -> None:
    service = _open(config_path)
    actor = _actor(by)
    entry = _locate(service, entry_id)
    with _outcomes():
        changed = service.set_hold(entry, actor, hold, reason)
    if not changed:
        click.echo(f"{entry.id}: {'already' if hold else 'not'} on legal hold")
    else:
        click.echo(f"{entry.id}: {'on legal hold' if hold else 'legal hold lifted'}")


@quarantine.command("hold")
@config_option
@by_option
@click.option("--reason", default=None, help="Why (a case number, a request), recorded.")
@click.argument("entry_id", metavar="ID")
@handles_errors
def hold_command(config_path: Path | None, by: str | None, reason: str | None,
                 entry_id: str) -> None:
    """Put an entry on legal hold: purge and delete leave it alone until unhold."""
    _set_hold(config_path, by, entry_id, True, reason)


@quarantine.command("unhold")
@config_option
@by_option
@click.option("--reason", default=None, help="Why the hold ended, recorded.")
@click.argument("entry_id", metavar="ID")
@handles_errors
def unhold_command(config_path: Path | None, by: str | None, reason: str | None,
                   entry_id: str) -> None:
    """Lift an entry's legal hold."""
    _set_hold(config_path, by, entry_id, False, reason)


# --- purge ------------------------------------------------------------------------------------


@quarantine.command("purge")
@config_option
@json_option
@by_option
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@handles_errors
def purge_command(config_path: Path | None, as_json: bool, by: str | None,
                  dry_run: bool) -> None:
    """Remove entries received more than quarantine.retention_days ago, except those on
    legal hold, those whose report is still waiting in the outbox and those reported to
    the CyberTipline (kept until submission + 365 days); also remove files of writes that
    never finished (an hour old or more)."""
    service = _open(config_path)
    actor = _actor(by)
    progress = _Progress("reading entries")
    done = service.purge(actor, dry_run, progress.step, progress.done)
    if as_json:
        click.echo(json.dumps(done.to_json()))
        return
    verb = "would purge" if dry_run else "purged"
    for entry in done.purged:
        click.echo(f"{verb} {entry.id} (received {entry.record.received_at})")
    for kept in done.kept_reported:
        report = (f"CyberTipline report {kept.report_id}" if kept.report_id is not None
                  else "a CyberTipline report whose outcome is unknown")
        click.echo(f"kept {kept.id}: {report} submitted {kept.submitted}, preserved until "
                   f"{kept.until}")
    click.echo(f"{verb} {counted(len(done.purged), 'entry', 'entries')} received before "
               f"{done.cutoff} "
               f"(retention {done.retention_days} days); kept {len(done.kept_on_hold)} on "
               f"legal hold, {len(done.kept_report_pending)} with reports pending, "
               f"{len(done.kept_reported)} reported to the CyberTipline; "
               f"{'would remove' if dry_run else 'removed'} {len(done.leftovers)} leftover "
               "files")


# --- submit -----------------------------------------------------------------------------------


def _decision(text: str | None) -> Literal["no-report", "abandon"] | int | None:
    if text is None or text in ("no-report", "abandon"):
        return text  # type: ignore[return-value]
    if text.isdigit():
        return int(text)
    raise click.BadParameter("expected no-report, abandon or NCMEC's report id",
                             param_hint="--decide")


@quarantine.command("submit")
@config_option
@json_option
@by_option
@yes_option
@click.option("--decide", "decision", default=None, metavar="no-report|abandon|REPORT_ID",
              help="When the outcome of /submit is unknown (ask NCMEC): no report arrived "
              "(submit again), NCMEC holds REPORT_ID (go on with it), or abandon.")
@click.argument("entry_id", metavar="ID")
@handles_errors
def submit_command(config_path: Path | None, as_json: bool, by: str | None, yes: bool,
                   decision: str | None, entry_id: str) -> None:
    """File the entry's CyberTipline report with NCMEC ([cybertip] settings): submit the
    report (sender, recipients, the client's IP and time), upload each matched file,
    describe it (hashes, not viewed), finish. Each step is recorded in the entry, so
    running it again after a failure resumes the same report, and running it for a
    finished entry says so (exit 0). Exit 2 when it is refused (no match on a list in
    [cybertip] lists, no --yes off a terminal), fails (run it again) or the outcome of
    /submit is unknown (decide with --decide)."""
    from mailfilter.cybertip.credentials import CredentialsError, client_of

    service = _open(config_path)
    actor = _actor(by)
    decided = _decision(decision)
    entry = _locate(service, entry_id)
    done = already(entry)
    if done is None:
        url = service.settings.cybertip.url
        with _outcomes():
            try:
                check_reportable(entry, service.settings)
            except Refused as exc:
                service.store.audit(actor, "submit", entry.id, f"refused: {exc}")
                raise
            _confirm(f"file a CyberTipline report of {entry.id} with {url}", yes)
            try:
                client = client_of(service.settings)
            except CredentialsError as exc:
                raise Refused(f"[cybertip]: {exc}") from exc
            done = submit_entry(service, entry, actor, client, decision=decided)
    if as_json:
        click.echo(json.dumps(done.to_json(), ensure_ascii=False))
    elif done.ok:
        click.echo(f"{entry.id}: {done.message}" if done.result == "finished"
                   else done.message)
    else:
        click.echo(f"mailfilter: {entry.id}: {done.message}", err=True)
    sys.exit(EXIT_OK if done.ok else EXIT_ERROR)


# --- report, export ---------------------------------------------------------------------------


@quarantine.command("report")
@config_option
@by_option
@click.option("--format", "fmt", type=click.Choice(["json", "cybertip-xml"]), default="json",
              show_default=True,
              help="json: the report document (as mailed); cybertip-xml: a draft shaped "
              "like an NCMEC CyberTipline report, for review.")
@click.option("--to", "to", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write to this file (0600) instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite the --to file if it exists.")
@click.argument("entry_id", metavar="ID")
@handles_errors
def report_command(config_path: Path | None, by: str | None, fmt: str, to: Path | None,
                   force: bool, entry_id: str) -> None:
    """Write an entry's report. Nothing is sent anywhere: a cybertip-xml draft is for a
    compliance officer to review and submit to NCMEC."""
    service = _open(config_path)
    actor = _actor(by)
    entry = _locate(service, entry_id)
    now = time.time()
    with _outcomes():
        data = service.report(entry, actor, fmt, now)
    if to is not None:
        _write_new_file(to, data, force)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    with _outcomes():
        service.report_written(entry, actor, fmt, to, now)
    if to is not None:
        click.echo(f"wrote the {fmt} report of {entry.id} to {to}", err=True)


@quarantine.command("export")
@config_option
@by_option
@click.option("--to", "to", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The file to write (created 0600).")
@click.option("--force", is_flag=True, help="Overwrite the file if it exists.")
@click.argument("entry_id", metavar="ID")
@handles_errors
def export_command(config_path: Path | None, by: str | None, to: Path, force: bool,
                   entry_id: str) -> None:
    """Write the raw quarantined message, exactly as received, to a file (0600)."""
    service = _open(config_path)
    actor = _actor(by)
    entry = _locate(service, entry_id)
    with _outcomes():
        data = service.export(entry, actor)
    _write_new_file(to, data, force)
    with _outcomes():
        service.exported(entry, actor, to, len(data))
    click.echo(f"wrote {len(data):,} bytes of {entry.id} to {to}")


# --- reindex ----------------------------------------------------------------------------------


@quarantine.command("reindex")
@config_option
@by_option
@handles_errors
def reindex_command(config_path: Path | None, by: str | None) -> None:
    """Rebuild this instance's part of the shared quarantine index from its directory."""
    service = _open(config_path)
    actor = _actor(by)
    progress = _Progress("reading entries")
    with _outcomes():
        counts = service.reindex(actor, progress.step, progress.done)
    if counts is None:
        click.echo("no shared index ([store] redis_url is empty): the quarantine directory "
                   "is the index")
        return
    written, removed = counts
    click.echo(f"quarantine index: {written} entries of {service.store.instance} written, "
               f"{removed} stale ones removed")
