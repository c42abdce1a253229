"""`mailfilter quarantine …`: inspect and act on quarantined messages.

    list     entries (this instance's, and with a shared Redis every instance's)
    show     one entry's metadata, matches and history (never the message or images)
    release  deliver the original message to its original recipients via the next hop
    delete   remove an entry's message (the record stays until purged)
    hold     put an entry on legal hold (purge and delete leave it alone); unhold
    purge    remove entries older than quarantine.retention_days, except held ones
    report   the entry's report as JSON or as a CyberTipline-shaped XML draft
    export   write the raw message to a file (0600)
    reindex  rebuild this instance's part of the shared quarantine index

Exit codes: 0 done; 1 no such entry here (not found, or held by another instance: the
message says which); 2 an error or a refusal (bad settings, an entry on legal hold, a file
that exists, a release the next hop refused, Redis unreachable for `reindex`).

Every command that reads or changes an entry (all but `list`) is appended to the audit
log with the operator's name: `--by NAME`, else $SUDO_USER, else $USER.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from mailfilter.actions.deliver import (
    Delivery,
    deliver,
    release_params,
    released_message,
    valid_actor,
)
from mailfilter.actions.quarantine import (
    STATUSES,
    QuarantineStore,
    StoredEntry,
    entry_summary,
    history_event,
    is_entry_id,
    iso_time,
)
from mailfilter.actions.quarantine_index import IndexUnavailable, QuarantineIndex, open_index
from mailfilter.actions.relay import NextHopUnavailable, RelayPool, local_hostname
from mailfilter.actions.report import (
    cybertip_xml,
    findings_text,
    printable,
    report_document,
    report_json,
    size_text,
)
from mailfilter.frontend.command_line import (
    EXIT_ERROR,
    EXIT_OK,
    config_option,
    counted,
    fail,
    handles_errors,
    json_option,
    load_for_command,
)
from mailfilter.settings import Settings

__all__ = ["EXIT_NOT_HERE", "parse_since", "quarantine"]

EXIT_NOT_HERE = 1
LEFTOVER_AGE = 3600.0  # unfinished writes older than this are removed by purge
T = TypeVar("T")

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


def _open(config_path: Path | None) -> tuple[Settings, QuarantineStore]:
    settings = load_for_command(config_path).settings
    return settings, QuarantineStore(settings.quarantine)


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


def _index(settings: Settings) -> QuarantineIndex | None:
    return open_index(settings.store)


def _locate(settings: Settings, store: QuarantineStore, entry_id: str) -> StoredEntry:
    """The entry on this instance, or exit 1 saying where it is (the shared index) or
    that there is none."""
    if not is_entry_id(entry_id):
        fail(f"{entry_id!r} is not a quarantine id")
    entry = store.find(entry_id)
    if entry is not None:
        return entry
    index = _index(settings)
    if index is not None:
        try:
            summary = index.get(entry_id)
        except IndexUnavailable as exc:
            _warn(f"quarantine index not reachable ({exc.detail}): cannot tell where else to look")
            summary = None
        finally:
            index.close()
        if summary is not None and summary.get("host") != store.instance:
            _not_here(f"{entry_id} is held by instance {printable(summary.get('host'))} "
                      f"(received {summary.get('received')}, status "
                      f"{summary.get('status')}): run the command there")
        if summary is not None:
            _not_here(f"{entry_id} is in the quarantine index but not in {store.root}: "
                      "the index is out of date (mailfilter quarantine reindex)")
    _not_here(f"no quarantine entry {entry_id} on {store.instance} ({store.root})")


def _sync_index(settings: Settings, store: QuarantineStore, entry: StoredEntry) -> None:
    """Best effort: the index follows an operator's change at once; if Redis is not
    reachable, an outbox job makes the service retry it."""
    index = _index(settings)
    if index is None:
        return
    try:
        pending = entry.id in store.pending_entry_ids()
        index.put(entry_summary(entry.record, report_pending=pending,
                                has_message=entry.has_message))
    except IndexUnavailable as exc:
        store.add_job(entry, ["index"])
        _warn(f"quarantine index not updated ({exc.detail}); the service will retry it")
    finally:
        index.close()


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        fail(f"not a terminal: add --yes to {question}")
    if not click.confirm(f"{question[0].upper()}{question[1:]}?", err=True):
        fail("nothing done")


def _change(store: QuarantineStore, entry: StoredEntry,
            change: Callable[[dict[str, Any]], T]) -> tuple[StoredEntry, T]:
    try:
        return store.update(entry.id, change)
    except KeyError:
        _not_here(f"{entry.id} disappeared (purged meanwhile?)")


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


def _when(summary: Mapping[str, Any]) -> str:
    ts = summary.get("received_ts")
    if not isinstance(ts, int | float):
        return str(summary.get("received") or "?")
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _status_cell(s: Mapping[str, Any]) -> str:
    flags = [str(s.get("status"))]
    if s.get("legal_hold"):
        flags.append("HOLD")
    if s.get("report_pending"):
        flags.append("report pending")
    return ", ".join(flags)


def _recipients_cell(to: Sequence[str]) -> str:
    if not to:
        return "-"
    return to[0] + (f" +{len(to) - 1}" if len(to) > 1 else "")


# --- list -----------------------------------------------------------------------------------


def _summaries(settings: Settings, store: QuarantineStore) -> list[dict[str, Any]]:
    pending = store.pending_entry_ids()
    progress = _Progress("reading entries")
    out = []
    for entry in store.entries():
        summary = entry_summary(entry.record, report_pending=entry.id in pending,
                                has_message=entry.has_message)
        summary["host"] = summary["host"] or store.instance
        out.append(summary)
        progress.step()
    progress.done()
    index = _index(settings)
    if index is not None:
        try:
            out += [s for s in index.all() if s.get("host") != store.instance]
        except IndexUnavailable as exc:
            _warn(f"quarantine index not reachable ({exc.detail}): showing this instance's "
                  "entries only")
        finally:
            index.close()
    out.sort(key=lambda s: (float(s.get("received_ts") or 0), str(s.get("id"))))
    return out


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
    settings, store = _open(config_path)
    cutoff = parse_since(since, time.time()) if since else None
    rows = [
        s for s in _summaries(settings, store)
        if (cutoff is None or float(s.get("received_ts") or 0) >= cutoff)
        and (list_name is None or list_name in (s.get("lists") or []))
        and (status is None or s.get("status") == status)
        and (not held or s.get("legal_hold"))
        and (host is None or s.get("host") == host)
    ]
    if limit is not None:
        rows = rows[-limit:]
    if as_json:
        with _reader_may_go_away():
            for s in rows:
                click.echo(json.dumps(s, ensure_ascii=False))
        return
    if not rows:
        click.echo("no quarantined messages" + (" match the filters" if any(
            (since, list_name, status, held, host)) else ""))
        return
    headers = ["ID", "RECEIVED (UTC)", "HOST", "STATUS", "FROM", "TO", "LISTS", "SUBJECT"]
    table = [[str(s.get("id")), _when(s), str(s.get("host") or "?"), _status_cell(s),
              str(s.get("from") or "<>"), _recipients_cell(list(s.get("to") or [])),
              ",".join(s.get("lists") or []) or str(s.get("reason") or "-"),
              str(s.get("subject") or "")]
             for s in rows]
    with _reader_may_go_away():
        for line in _table(headers, table, {4: 32, 5: 32, 6: 24, 7: 40}):
            click.echo(line)
    held_count = sum(1 for s in rows if s.get("legal_hold"))
    pending = sum(1 for s in rows if s.get("report_pending"))
    click.echo(f"{counted(len(rows), 'entry', 'entries')} ({held_count} on legal hold, "
               f"{pending} with reports pending)")


# --- show -----------------------------------------------------------------------------------


def _job_states(store: QuarantineStore, entry_id: str) -> list[dict[str, Any]]:
    return [{"steps": j.steps, "done": j.done, "attempts": j.attempts,
             "next_attempt": iso_time(j.next_attempt) if j.next_attempt else None,
             "last_error": j.last_error}
            for j in store.jobs() if j.entry_id == entry_id]


def _received(record: Mapping[str, Any]) -> str:
    ts = record.get("received_ts")
    return iso_time(ts) if isinstance(ts, int | float) else str(record.get("received"))


def show_text(entry: StoredEntry, jobs: Sequence[Mapping[str, Any]]) -> list[str]:
    r = entry.record
    client = r.get("client") or {}
    envelope = r.get("envelope") or {}
    policy = r.get("policy") or {}
    p = printable
    hold = "yes" if r.get("legal_hold") else "no"
    lines = [
        f"entry {entry.id} on {p(r.get('host'))}",
        f"  status      {r.get('status')}; legal hold: {hold}",
        f"  received    {_received(r)} via {p(r.get('front_end') or '?')}",
        f"  client      {p(client.get('name') or 'unknown')} [{p(client.get('addr') or '?')}]"
        f", HELO {p(client.get('helo') or '-')}, queue id {p(r.get('queue_id') or '-')}",
        f"  sender      {p(envelope.get('mail_from') or '<>')}",
        f"  recipients  {', '.join(p(x) for x in envelope.get('rcpt_tos') or [])}",
        f"  message-id  {p(r.get('message_id') or '-')}",
        f"  subject     {p(r.get('subject') or '')}",
        f"  size        {size_text(r.get('size'))}; message held: "
        f"{'yes' if entry.has_message else 'no (deleted)'}",
        f"  verdict     {r.get('verdict')}: {r.get('action')} ({r.get('reason')}; policy "
        + ", ".join(f"{k} = {v}" for k, v in policy.items()) + ")",
    ]
    for job in jobs:
        waiting = [s for s in job["steps"] if s not in job["done"]]
        state = f"pending: {', '.join(waiting)}"
        if job["attempts"]:
            state += (f" (attempt {job['attempts']} failed: {p(job['last_error'])}; next "
                      f"try {job['next_attempt']})")
        lines.append(f"  report      {state}")
    lines += findings_text(r)
    lines.append("history")
    for h in r.get("history") or []:
        detail = " ".join(f"{k}={p(v if not isinstance(v, list) else ','.join(map(str, v)))}"
                          for k, v in h.items() if k not in ("event", "time", "by"))
        lines.append(f"  {h.get('time')}  {h.get('event'):<16} by {p(h.get('by'))}"
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
    settings, store = _open(config_path)
    actor = _actor(by)
    entry = _locate(settings, store, entry_id)
    jobs = _job_states(store, entry.id)
    store.audit(actor, "show", entry.id, "ok")
    if as_json:
        click.echo(json.dumps({**entry.record, "message_held": entry.has_message,
                               "report_pending": bool(jobs), "outbox": jobs},
                              ensure_ascii=False))
    else:
        click.echo("\n".join(show_text(entry, jobs)))


# --- release --------------------------------------------------------------------------------


async def _release(settings: Settings, mail_from: str, params: Sequence[str],
                   recipients: Sequence[tuple[str, Sequence[str]]], message: bytes
                   ) -> Delivery:
    pool = RelayPool(settings.smtp, local_hostname(settings.smtp.hostname))
    try:
        return await deliver(pool, mail_from, params, recipients, message)
    finally:
        await pool.close()


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
    settings, store = _open(config_path)
    actor = _actor(by)
    entry = _locate(settings, store, entry_id)
    record = entry.record
    if not entry.has_message:
        store.audit(actor, "release", entry.id, "refused: message deleted")
        fail(f"{entry.id}: the message was deleted; there is nothing to release")
    if record.get("status") == "released" and not force:
        last: dict[str, Any] = next(
            (h for h in reversed(record["history"]) if h.get("event") == "released"), {})
        store.audit(actor, "release", entry.id, "refused: already released")
        fail(f"{entry.id} was already released by {printable(last.get('by'))} at "
             f"{last.get('time')} (add --force to release it again)")
    envelope = record.get("envelope") or {}
    recipients = list(envelope.get("rcpt_tos") or [])
    _confirm(f"release {entry.id} to {', '.join(recipients)}", yes)
    now = time.time()
    message = released_message(entry.message_path.read_bytes(), actor, iso_time(now),
                               entry.id)
    params = release_params(envelope.get("mail_options") or [], len(message))
    options = list(envelope.get("rcpt_options") or [])
    targets = [(addr, options[i] if i < len(options) else [])
               for i, addr in enumerate(recipients)]
    try:
        delivery = asyncio.run(_release(settings, str(envelope.get("mail_from") or ""),
                                        params, targets, message))
    except NextHopUnavailable as exc:
        store.audit(actor, "release", entry.id, f"failed: {exc}")
        fail(f"{entry.id} not released: next hop {settings.smtp.next_hop}: {exc}")
    refused = {addr: str(reply) for addr, reply in delivery.refused}
    reply = str(delivery.reply) if delivery.reply is not None else None

    def change(rec: dict[str, Any]) -> None:
        event = "released" if delivery.delivered else "release-failed"
        rec["history"].append(history_event(
            event, now, actor, next_hop=settings.smtp.next_hop, reply=reply,
            delivered_to=delivery.accepted if delivery.delivered else [], refused=refused))
        if delivery.delivered:
            rec["status"] = "released"

    entry, _ = _change(store, entry, change)
    result = "ok" if delivery.delivered and not refused else (
        "partial" if delivery.delivered else "failed")
    store.audit(actor, "release", entry.id, result, next_hop=settings.smtp.next_hop,
                reply=reply, delivered_to=delivery.accepted if delivery.delivered else [],
                refused=refused)
    _sync_index(settings, store, entry)
    if delivery.delivered:
        click.echo(f"released {entry.id} to {', '.join(delivery.accepted)} ({reply})")
        if record.get("front_end") == "milter" and record.get("queue_id"):
            # The MTA's copy is still on hold (SMFIR_QUARANTINE): docs/milter.md
            click.echo(f"Postfix still holds its own copy: delete it with `postsuper -d "
                       f"{printable(record['queue_id'])} hold` (never release it too)", err=True)
    for addr, why in refused.items():
        click.echo(f"not released to {addr}: {why}", err=True)
    if not delivery.delivered and delivery.reply is not None:
        click.echo(f"not released: next hop answered {reply}", err=True)
    sys.exit(EXIT_OK if result == "ok" else EXIT_ERROR)


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
    settings, store = _open(config_path)
    actor = _actor(by)
    entry = _locate(settings, store, entry_id)
    if entry.record.get("legal_hold"):
        store.audit(actor, "delete", entry.id, "refused: legal hold")
        fail(f"{entry.id} is on legal hold: it cannot be deleted (unhold it first if the "
             "hold has ended)")
    if not entry.has_message:
        store.audit(actor, "delete", entry.id, "ok: already deleted")
        click.echo(f"{entry.id}: already deleted")
        return
    _confirm(f"delete the message of {entry.id}", yes)
    store.delete_message(entry)
    now = time.time()

    def change(rec: dict[str, Any]) -> None:
        rec["history"].append(history_event("deleted", now, actor))
        rec["status"] = "deleted"

    entry, _ = _change(store, entry, change)
    store.audit(actor, "delete", entry.id, "ok")
    _sync_index(settings, store, entry)
    click.echo(f"deleted the message of {entry.id} (its record stays until purged)")


def _set_hold(config_path: Path | None, by: str | None, entry_id: str, hold: bool,
              reason: str | None) -> None:
    settings, store = _open(config_path)
    actor = _actor(by)
    entry = _locate(settings, store, entry_id)
    action = "hold" if hold else "unhold"
    if bool(entry.record.get("legal_hold")) == hold:
        store.audit(actor, action, entry.id, "ok: unchanged")
        click.echo(f"{entry.id}: {'already' if hold else 'not'} on legal hold")
        return
    now = time.time()
    detail = {"reason": reason} if reason else {}

    def change(rec: dict[str, Any]) -> None:
        rec["legal_hold"] = hold
        rec["history"].append(history_event(action, now, actor, **detail))

    entry, _ = _change(store, entry, change)
    store.audit(actor, action, entry.id, "ok", **detail)
    _sync_index(settings, store, entry)
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
    legal hold and those whose report is still waiting in the outbox; also remove files
    of writes that never finished (an hour old or more)."""
    settings, store = _open(config_path)
    actor = _actor(by)
    now = time.time()
    cutoff = now - store.retention_days * 86400
    pending = store.pending_entry_ids()
    progress = _Progress("reading entries")
    expired: list[StoredEntry] = []
    held: list[str] = []
    waiting: list[str] = []
    for entry in store.entries():
        progress.step()
        if float(entry.record.get("received_ts") or now) >= cutoff:
            continue
        if entry.record.get("legal_hold"):
            held.append(entry.id)
        elif entry.id in pending:
            waiting.append(entry.id)
        else:
            expired.append(entry)
    progress.done()
    leftovers = store.leftovers(now - LEFTOVER_AGE)
    if not dry_run:
        for entry in expired:
            store.remove(entry)
        for path in leftovers:
            path.unlink(missing_ok=True)
    removed = [e.id for e in expired]
    summary = {
        "dry_run": dry_run, "retention_days": store.retention_days,
        "cutoff": iso_time(cutoff), "purged": removed, "kept_on_hold": held,
        "kept_report_pending": waiting, "leftovers": [str(p) for p in leftovers],
    }
    if removed and not dry_run:
        index = _index(settings)
        if index is not None:
            try:
                index.remove(removed)
            except IndexUnavailable as exc:
                _warn(f"quarantine index not updated ({exc.detail}): run mailfilter quarantine "
                      "reindex")
            finally:
                index.close()
    store.audit(actor, "purge", None, "dry-run" if dry_run else "ok", **{
        k: v for k, v in summary.items() if k != "dry_run"})
    if as_json:
        click.echo(json.dumps(summary))
        return
    verb = "would purge" if dry_run else "purged"
    for entry in expired:
        click.echo(f"{verb} {entry.id} (received {_received(entry.record)})")
    click.echo(f"{verb} {counted(len(removed), 'entry', 'entries')} received before "
               f"{iso_time(cutoff)} "
               f"(retention {store.retention_days} days); kept {len(held)} on legal hold, "
               f"{len(waiting)} with reports pending; "
               f"{'would remove' if dry_run else 'removed'} {len(leftovers)} leftover files")


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
    settings, store = _open(config_path)
    actor = _actor(by)
    entry = _locate(settings, store, entry_id)
    now = time.time()
    if fmt == "json":
        data = report_json(report_document(entry.record, now))
    else:
        try:
            data = cybertip_xml(entry.record, settings.report, now)
        except ValueError as exc:
            store.audit(actor, "report", entry.id, f"refused: {exc}", format=fmt)
            fail(f"{entry.id}: {exc}")
        missing = [k for k in ("reporter_name", "reporter_email")
                   if not getattr(settings.report, k)]
        if missing:
            _warn(f"[report] {' and '.join(missing)} not set: the reporter is left empty")
    if to is not None:
        _write_new_file(to, data, force)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()

    def change(rec: dict[str, Any]) -> None:
        rec["history"].append(history_event("report-written", now, actor, format=fmt,
                                            to=str(to) if to else "stdout"))

    _change(store, entry, change)
    store.audit(actor, "report", entry.id, "ok", format=fmt, to=str(to) if to else "stdout")
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
    settings, store = _open(config_path)
    actor = _actor(by)
    entry = _locate(settings, store, entry_id)
    if not entry.has_message:
        store.audit(actor, "export", entry.id, "refused: message deleted")
        fail(f"{entry.id}: the message was deleted; there is nothing to export")
    data = entry.message_path.read_bytes()
    _write_new_file(to, data, force)
    now = time.time()

    def change(rec: dict[str, Any]) -> None:
        rec["history"].append(history_event("exported", now, actor, to=str(to)))

    _change(store, entry, change)
    store.audit(actor, "export", entry.id, "ok", to=str(to), bytes=len(data))
    click.echo(f"wrote {len(data):,} bytes of {entry.id} to {to}")


# --- reindex ----------------------------------------------------------------------------------


@quarantine.command("reindex")
@config_option
@by_option
@handles_errors
def reindex_command(config_path: Path | None, by: str | None) -> None:
    """Rebuild this instance's part of the shared quarantine index from its directory."""
    settings, store = _open(config_path)
    actor = _actor(by)
    index = _index(settings)
    if index is None:
        click.echo("no shared index ([store] redis_url is empty): the quarantine directory "
                   "is the index")
        return
    pending = store.pending_entry_ids()
    progress = _Progress("reading entries")
    summaries = []
    for entry in store.entries():
        progress.step()
        summary = entry_summary(entry.record, report_pending=entry.id in pending,
                                has_message=entry.has_message)
        summary["host"] = summary["host"] or store.instance
        summaries.append(summary)
    progress.done()
    try:
        written, removed = index.replace_host(store.instance, summaries)
    except IndexUnavailable as exc:
        store.audit(actor, "reindex", None, f"failed: {exc.detail}")
        fail(f"quarantine index not reachable: {exc.detail}")
    finally:
        index.close()
    store.audit(actor, "reindex", None, "ok", written=written, removed=removed)
    click.echo(f"quarantine index: {written} entries of {store.instance} written, "
               f"{removed} stale ones removed")
