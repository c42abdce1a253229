"""Checks the `[cybertip]` settings against NCMEC's service: the credentials (GET /status)
and, with `--test-report`, a whole benign test report (submit, upload, fileinfo, finish)
to the test environment. Refused against any other service, so that nothing reaches the
production CyberTipline from here.

    python -m mailfilter.cybertip.check [--config FILE]
    python -m mailfilter.cybertip.check [--config FILE] --save-xsd FILE
    python -m mailfilter.cybertip.check [--config FILE] --test-report --journal FILE
        [--decide no-report|abandon|REPORT_ID]

The journal file keeps the steps: run the same command again after a failure to resume
the same report. Exit 0 when the check passed, 1 when the service refused or failed, 2
for a setting or file problem.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from mailfilter.cybertip.client import CybertipClient
from mailfilter.cybertip.credentials import CredentialsError, client_of
from mailfilter.cybertip.document import InvalidDocument
from mailfilter.cybertip.email_report import (
    MailIncident,
    MatchedFile,
    build_file_details,
    build_report,
)
from mailfilter.cybertip.journal import (
    FileToReport,
    Finished,
    Journal,
    Unknown,
    decide,
    plan,
    run_steps,
)
from mailfilter.cybertip.protocol import CybertipError
from mailfilter.errors import ConfigError
from mailfilter.settings import Settings, load_settings

TEST_ENVIRONMENT: Final = "https://exttest.cybertip.org/ispws"
_LOCAL_PREFIXES: Final = ("http://127.0.0.1", "http://[::1]", "http://localhost")


def _test_picture() -> bytes:
    """A benign generated picture (a colour gradient): the test report's file."""
    from PIL import Image

    image = Image.new("RGB", (64, 64))
    image.putdata([(x * 4, y * 4, 128) for y in range(64) for x in range(64)])
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _test_material(settings: Settings) -> tuple[MailIncident, MatchedFile, bytes]:
    import hashlib

    data = _test_picture()
    address = settings.cybertip.reporter_email or settings.report.reporter_email
    incident = MailIncident(
        sender=address, recipients=(address,), received=datetime.now(UTC),
        host="mailfilter-check", client_ip="192.0.2.1",
        subject="mailfilter test report: not a real incident")
    file = MatchedFile("mailfilter-test.png", "1", "image/png", len(data),
                       hashlib.md5(data).hexdigest(), hashlib.sha1(data).hexdigest(),
                       hashlib.sha256(data).hexdigest(),
                       ("a generated test picture, not a real match",))
    return incident, file, data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailfilter.cybertip.check",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--test-report", action="store_true",
                        help="file a whole benign test report (test environment only)")
    parser.add_argument("--save-xsd", type=Path, metavar="FILE",
                        help="download NCMEC's XSD (GET /xsd) into FILE, for [cybertip] xsd")
    parser.add_argument("--journal", type=Path,
                        help="where the test report's steps are kept (to resume it)")
    parser.add_argument("--decide", metavar="no-report|abandon|REPORT_ID",
                        help="when the outcome of /submit is unknown: no report was made "
                             "(submit again), give up, or NCMEC holds this report (go on)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config).settings
        client = client_of(settings)
    except (ConfigError, CredentialsError) as exc:
        print(f"cybertip check: {exc}", file=sys.stderr)
        return 2
    url = settings.cybertip.url
    if args.test_report:  # refused before anything is sent
        if url != TEST_ENVIRONMENT and not url.startswith(_LOCAL_PREFIXES):
            print(f"cybertip check: a test report goes to the test environment "
                  f"({TEST_ENVIRONMENT}) only, not to {url}", file=sys.stderr)
            return 2
        if args.journal is None:
            print("cybertip check: --test-report needs --journal FILE", file=sys.stderr)
            return 2
    try:
        answer = client.status()
    except CybertipError as exc:
        print(f"cybertip check: {url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: status ok ({answer.response_description})")
    if args.save_xsd is not None:
        try:
            schema = client.xsd()
        except CybertipError as exc:
            print(f"cybertip check: {url}: {exc}", file=sys.stderr)
            return 1
        args.save_xsd.write_bytes(schema)
        print(f"{args.save_xsd}: NCMEC's XSD, {len(schema)} bytes")
    if not args.test_report:
        return 0
    return _test_report(settings, client, args.journal, args.decide)


def _decided(journal: Journal, decision: str) -> Journal:
    now = time.time()
    choices: dict[str, Literal["no-report", "abandon"]] = {"no-report": "no-report",
                                                           "abandon": "abandon"}
    if decision in choices:
        return decide(journal, choices[decision], now,
                      note="python -m mailfilter.cybertip.check")
    return decide(journal, "report-exists", now, report_id=int(decision),
                  note="python -m mailfilter.cybertip.check")


def _test_report(settings: Settings, client: CybertipClient, journal_path: Path,
                 decision: str | None) -> int:
    try:
        incident, file, data = _test_material(settings)
        report = build_report(incident, (file,), settings)
    except ValueError as exc:
        print(f"cybertip check: {exc}", file=sys.stderr)
        return 2
    files = [FileToReport(file.name, lambda: data, build_file_details(incident, file,
                                                                      settings))]
    # The picture is the same every time, so a journal of an earlier run fits it.
    journal = (Journal.from_dict(json.loads(journal_path.read_text()))
               if journal_path.exists() else plan(files))

    def save(j: Journal) -> None:
        temporary = journal_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(j.to_dict()))
        temporary.replace(journal_path)

    if decision is not None:
        try:
            journal = _decided(journal, decision)
        except ValueError as exc:
            print(f"cybertip check: --decide {decision}: {exc}", file=sys.stderr)
            return 2
        save(journal)

    xsd = Path(settings.cybertip.xsd) if settings.cybertip.xsd else None
    try:
        journal, action = run_steps(journal, report, files, client, save, xsd=xsd,
                                    clock=time.time)
    except InvalidDocument as exc:
        print(f"cybertip check: the test report does not validate: {exc}", file=sys.stderr)
        return 2
    except CybertipError as exc:
        again = "run the same command again to resume" if exc.retry_safe else (
            "the outcome is unknown: ask NCMEC, then run again with --decide no-report or "
            "--decide REPORT_ID")
        print(f"cybertip check: {exc} ({again})", file=sys.stderr)
        return 1
    for event in journal.events:
        ids = " ".join(f"{k}={v}" for k, v in (("report", event.report_id),
                                               ("file", event.file_id)) if v)
        print(f"  {event.step} {event.state} {ids}".rstrip())
    if isinstance(action, Finished):
        print(f"test report {action.report_id} filed and finished "
              f"(files {', '.join(action.file_ids)})")
        return 0
    if isinstance(action, Unknown):
        print(f"cybertip check: the outcome of /submit is unknown ({action.reason}): ask "
              "NCMEC, then run again with --decide no-report or --decide REPORT_ID",
              file=sys.stderr)
        return 1
    print(f"cybertip check: {action}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
