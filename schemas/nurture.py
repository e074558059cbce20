"""Messages of nurture: follow-up sequences that the stream times and a mailer delivers.

- `nurture.commands`: `NurtureTick` (no key; sent to every partition), the clock of
  the nurture agent: a tick carries the time it stands for, so a test (or an
  operator catching up) moves the clock forward by publishing one; and
  `NurtureForget` (key: lead id), sent by `leadflow erase`.
- `nurture.sends` (key: lead id): `NurtureEmail`, an email the nurture agent decided
  to send, rendered; the mailer (`sinks/mailer.py`) delivers it once per `send_id`.
- `nurture.events` (key: lead id): `NurtureEvent`, everything that happened in a
  sequence (enrolled, sent, bounced, opened, task_created, ...), for ClickHouse's
  `nurture_events` table.
- `nurture.suppressions` (compacted; key: identifier hash): who may not be mailed
  (unsubscribed or hard-bounced). Unlike `privacy.suppressions` it does not stop a
  person's leads from being captured, only mail to them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NurtureTick(_Message):
    type: Literal["tick"] = "tick"
    now: datetime = Field(description="The time this tick stands for (UTC).")


class NurtureForget(_Message):
    """Erasure: drop the lead's sequences, tasks and timers (nothing more is sent)."""

    type: Literal["forget"] = "forget"
    lead_id: str


NURTURE_COMMAND: TypeAdapter[NurtureTick | NurtureForget] = TypeAdapter(
    Annotated[NurtureTick | NurtureForget, Field(discriminator="type")]
)


class NurtureEmail(_Message):
    type: Literal["email"] = "email"
    send_id: str = Field(
        description="Derived from (lead, sequence, step, enrolment): a replay or a second "
        "worker produces the same id, and the mailer sends each id once."
    )
    lead_id: str
    sequence: str
    step: str
    template: str
    locale: str
    to: str
    subject: str
    text: str = Field(description="The rendered body; links are the template's own URLs.")
    links: list[str] = Field(
        default_factory=list,
        description="The template's URLs in order; the mailer wraps each in a signed "
        "click link that can only lead back to this URL.",
    )
    due_at: datetime


NurtureEventKind = Literal[
    "enrolled",
    "sent",
    "delivered",
    "bounced",
    "opened",
    "clicked",
    "replied",
    "unsubscribed",
    "exited",
    "skipped",
    "task_created",
    "task_done",
]


class NurtureEvent(_Message):
    type: Literal["nurture_event"] = "nurture_event"
    event_id: str = Field(description="Stable: the same happening always has the same id.")
    lead_id: str
    sequence: str
    step: str = ""
    kind: NurtureEventKind
    at: datetime
    owner: str = Field(default="", description="For tasks: the rep who owns the call.")
    due_at: datetime | None = Field(default=None, description="For tasks: when the call is due.")
    send_id: str = Field(default="", description="The email's send id, or the call task's id.")
    detail: str = Field(default="", description="Why (an exit's cause, a bounce's reply).")
