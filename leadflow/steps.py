"""Stable stage names: used in logs, metrics, dead-letter topics and rows.

Renaming one renames a `dlq.<stage>` topic, so treat these as a contract.
"""

from typing import Final

WEB_FORM: Final = "web_form"
CALL_CENTER: Final = "call_center"
SOCIAL_ADS: Final = "social_ads"
TRADESHOW_UPLOAD: Final = "tradeshow_upload"
NORMALIZE: Final = "normalize"
IDENTITY: Final = "identity"
LEAD: Final = "lead"
ROUTE: Final = "route"
EVENTS: Final = "events"
NOTIFY: Final = "notify"
NURTURE: Final = "nurture"
MAILER: Final = "mailer"
TRACKING: Final = "tracking"
LEARN: Final = "learn"
CLICKHOUSE_WRITER: Final = "clickhouse_writer"

ALL: Final = (
    WEB_FORM,
    CALL_CENTER,
    SOCIAL_ADS,
    TRADESHOW_UPLOAD,
    NORMALIZE,
    IDENTITY,
    LEAD,
    ROUTE,
    EVENTS,
    NOTIFY,
    NURTURE,
    MAILER,
    TRACKING,
    LEARN,
    CLICKHOUSE_WRITER,
)
