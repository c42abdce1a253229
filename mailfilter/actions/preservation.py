"""How long an entry with a CyberTipline report is preserved (18 U.S.C. § 2258A as
amended by the REPORT Act of 2024: one year): until the later of receipt +
`retention_days` and submission + 365 days, whatever `retention_days` says. An entry
counts as reported once /submit was answered with a report id (or the operator said NCMEC
holds one), and while the outcome of /submit is unknown (a report may exist).
"""

from __future__ import annotations

from typing import Final

from mailfilter.actions.records import QuarantineRecord
from mailfilter.cybertip.journal import Journal, Unknown, next_step, progress

__all__ = ["PRESERVATION_DAYS", "journal_of", "preserved_until", "report_id_of",
           "submission_time"]

PRESERVATION_DAYS: Final = 365


def journal_of(record: QuarantineRecord) -> Journal | None:
    return None if record.cybertip is None else Journal.from_dict(record.cybertip)


def report_id_of(record: QuarantineRecord) -> int | None:
    """NCMEC's report id, once /submit answered it (or the operator said which it is)."""
    journal = journal_of(record)
    return None if journal is None else progress(journal).report_id


def submission_time(record: QuarantineRecord) -> float | None:
    """When the report was filed: NCMEC's answer to /submit (or the operator's word that
    it holds one); while the outcome of /submit is unknown, when it was last sent (a
    report may exist). None when no report was ever filed, or none can exist."""
    journal = journal_of(record)
    if journal is None:
        return None
    filed = [e.at for e in journal.events
             if (e.step == "submit" and e.state == "done")
             or (e.step == "operator" and e.state == "report-exists")]
    if filed:
        return max(filed)
    if isinstance(next_step(journal), Unknown):
        return max(e.at for e in journal.events if e.step == "submit")
    return None


def preserved_until(record: QuarantineRecord, retention_days: int) -> float | None:
    """Until when a reported entry must be kept: the later of receipt + retention_days
    and submission + 365 days; None for an entry without a report."""
    submitted = submission_time(record)
    if submitted is None:
        return None
    received = float(record.received_ts or submitted)
    return max(received + retention_days * 86400, submitted + PRESERVATION_DAYS * 86400)
