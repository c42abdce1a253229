"""The report document of one entry: who sent what to whom from where, the attachments'
names, sizes, types and hashes, every match (list, algorithm, distance, labels), the
verdict and policy, the entry's status. Never message or image content. The same JSON
goes to every channel and is what `quarantine report --format json` prints."""

from __future__ import annotations

import json

from mailfilter import __version__
from mailfilter.actions.records import (
    REPORT_FORMAT,
    REPORT_TYPE,
    QuarantineRecord,
    ReportDocument,
    iso_time,
)

__all__ = ["REPORT_FORMAT", "REPORT_TYPE", "ReportDocument", "report_document", "report_json"]


def report_document(record: QuarantineRecord, generated: float) -> ReportDocument:
    """The report of one entry, generated at `generated` (Unix seconds)."""
    return ReportDocument.of(record, iso_time(generated), f"mailfilter {__version__}")


def report_json(doc: ReportDocument) -> bytes:
    """The document as the channels send it and `quarantine report` writes it."""
    return json.dumps(doc.to_json(), ensure_ascii=False, indent=1).encode() + b"\n"
