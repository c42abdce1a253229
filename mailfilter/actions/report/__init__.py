"""Reports of quarantined messages: what they say, where they go, and the sender that
delivers them from the durable outbox.

    document.py   the JSON document of one entry (never message or image content)
    text.py       the same for people: the report mail's text, findings lines
    cybertip.py   a draft shaped like an NCMEC CyberTipline report, for review
    channels.py   mail, report directory, webhook (and the status and index steps):
                  one class each behind `ReportStep`; `report_steps` for new entries
    sender.py     `ReportSender`, the service's task that works through the outbox

The names most callers need are here too.
"""

from __future__ import annotations

from mailfilter.actions.report.channels import report_steps, verify_webhook, webhook_headers
from mailfilter.actions.report.cybertip import INCIDENT_TYPE, cybertip_xml
from mailfilter.actions.report.document import REPORT_FORMAT, report_document, report_json
from mailfilter.actions.report.sender import ReportSender
from mailfilter.actions.report.text import report_mail, report_text

__all__ = [
    "INCIDENT_TYPE",
    "REPORT_FORMAT",
    "ReportSender",
    "cybertip_xml",
    "report_document",
    "report_json",
    "report_mail",
    "report_steps",
    "report_text",
    "verify_webhook",
    "webhook_headers",
]
