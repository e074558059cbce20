"""The nurture agent's step functions against a plain dict table, with the clock moved by
ticks: a 30-day sequence runs in milliseconds. The agent calls these very functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from leadflow.errors import ConfigurationError
from leadflow.nurture_rules import NurtureRules, load_nurture
from leadflow.suppression import identifier_hash
from leadflow.topics import Topics
from schemas import Engagement, LeadState, Touch
from schemas.nurture import NurtureEmail, NurtureEvent, NurtureForget, NurtureTick
from streams.nurture_agent import nurture_step

CONFIG = Path(__file__).resolve().parents[2] / "config"
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC
TOPICS = Topics()


class Stage:
    """One partition of the nurture agent: its table, and everything it sent."""

    def __init__(self, rules: NurtureRules | None = None) -> None:
        self.rules = rules or load_nurture(CONFIG)
        self.table: dict[str, Any] = {}
        self.emails: list[NurtureEmail] = []
        self.events: list[NurtureEvent] = []
        self.dead: list[Exception] = []
        self.suppressed: list[str] = []

    def add(self, topic: str, key: str | bytes, value: bytes) -> None:
        if topic == TOPICS.nurture_sends:
            self.emails.append(NurtureEmail.model_validate_json(value))
        elif topic == TOPICS.nurture_suppressions:
            self.suppressed.append(key if isinstance(key, str) else key.decode())
        else:
            self.events.append(NurtureEvent.model_validate_json(value))

    def dead_letter(self, dlq: str, step: str, event: Any, error: Exception) -> None:
        self.dead.append(error)

    def _record(self, topic: str, value: bytes) -> Any:
        return SimpleNamespace(value=value, message=SimpleNamespace(topic=topic, partition=0))

    def snapshot(self, lead: LeadState, now: datetime) -> None:
        record = self._record(TOPICS.leads_identified, lead.model_dump_json().encode())
        nurture_step(record, self.table, self, topics=TOPICS, rules=self.rules, now=now)

    def tick(self, now: datetime) -> None:
        record = self._record(
            TOPICS.nurture_commands, NurtureTick(now=now).model_dump_json().encode()
        )
        nurture_step(record, self.table, self, topics=TOPICS, rules=self.rules, now=now)

    def forget(self, lead_id: str, now: datetime) -> None:
        value = NurtureForget(lead_id=lead_id).model_dump_json().encode()
        record = self._record(TOPICS.nurture_commands, value)
        nurture_step(record, self.table, self, topics=TOPICS, rules=self.rules, now=now)

    def kinds(self, sequence: str | None = None) -> list[str]:
        return [e.kind for e in self.events if sequence is None or e.sequence == sequence]


def web_lead(lead_id: str = "L1", at: datetime = T0, **fields: Any) -> LeadState:
    values: dict[str, Any] = {
        "lead_id": lead_id,
        "first_seen": at,
        "updated_at": at,
        "email": "ana@contoso.com",
        "first_name": "Ana",
        "full_name": "Ana Lima",
        "company": "Contoso",
        "consent": True,
        "country": "DE",
        "stage": "new",
        "stage_at": at,
        "touches": [Touch(event_id="e1", channel="web", source="website", medium="form", at=at)],
    }
    values.update(fields)
    return LeadState(**values)


def test_a_new_web_lead_gets_the_welcome_at_once_and_the_features_email_three_days_later() -> None:
    stage = Stage()
    stage.snapshot(web_lead(), T0)
    assert stage.kinds("welcome") == ["enrolled"]
    assert stage.emails == []  # steps run on the clock, not on a snapshot
    stage.snapshot(web_lead(owner="r1", owner_name="Rita Rep", stage="assigned"), T0)
    stage.tick(T0 + timedelta(seconds=5))
    (welcome,) = stage.emails
    assert welcome.template == "welcome"
    assert welcome.to == "ana@contoso.com"
    assert welcome.subject == "Welcome to Acme, Ana"
    assert "Rita Rep" in welcome.text
    assert welcome.locale == "en"
    assert welcome.links == ["https://www.example.com/tour"]
    stage.tick(T0 + timedelta(days=2, hours=23))
    assert len(stage.emails) == 1
    stage.tick(T0 + timedelta(days=3, minutes=1))
    assert [e.template for e in stage.emails] == ["welcome", "features"]
    assert stage.emails[1].subject == "What teams like Contoso do with Acme"
    assert stage.kinds("welcome")[-1] == "exited"
    assert stage.events[-1].detail == "completed"


def test_send_ids_are_the_same_on_a_replay_from_the_same_state() -> None:
    first, second = Stage(), Stage()
    for stage in (first, second):
        stage.snapshot(web_lead(), T0)
        stage.tick(T0 + timedelta(seconds=5))
    # A replay: the tick again, from the state before it (a worker killed before commit).
    replay = Stage()
    replay.snapshot(web_lead(), T0)
    saved = {k: v for k, v in replay.table.items()}
    replay.tick(T0 + timedelta(seconds=5))
    replay.table = saved
    replay.tick(T0 + timedelta(seconds=5))
    ids = {e.send_id for e in first.emails + second.emails + replay.emails}
    assert len(ids) == 1
    assert len(replay.emails) == 2
    assert {e.event_id for e in first.events} == {e.event_id for e in second.events}


def test_a_chinese_lead_gets_the_chinese_template_and_a_missing_owner_reads_naturally() -> None:
    stage = Stage()
    stage.snapshot(web_lead(country="CN", full_name="王芳", first_name=None), T0)
    stage.tick(T0)
    (email,) = stage.emails
    assert email.locale == "zh"
    assert email.subject == "欢迎，王芳"
    assert "我们的团队" in email.text
    assert "{" not in email.text


def test_the_step_waits_for_business_hours_in_the_leads_time_zone() -> None:
    stage = Stage()
    friday_evening = datetime(2026, 3, 6, 20, 0, tzinfo=UTC)  # 21:00 in Berlin
    stage.snapshot(web_lead(at=friday_evening), friday_evening)
    stage.tick(friday_evening)
    assert len(stage.emails) == 1  # the welcome is not bound to business hours
    monday_three_days_later = friday_evening + timedelta(days=3)  # Monday 21:00 Berlin
    stage.tick(monday_three_days_later)
    assert len(stage.emails) == 1
    stage.tick(datetime(2026, 3, 10, 7, 59, tzinfo=UTC))  # Tuesday 08:59 Berlin
    assert len(stage.emails) == 1
    stage.tick(datetime(2026, 3, 10, 8, 0, tzinfo=UTC))  # 09:00 Berlin
    assert [e.template for e in stage.emails] == ["welcome", "features"]


def test_a_reply_ends_the_sequence() -> None:
    stage = Stage()
    stage.snapshot(web_lead(), T0)
    stage.tick(T0)
    reply = Engagement(event_id="esp-77", kind="email_reply", at=T0 + timedelta(hours=2))
    stage.snapshot(web_lead(engagements=[reply], updated_at=T0 + timedelta(hours=2)), T0)
    assert stage.kinds("welcome") == ["enrolled", "exited"]
    assert stage.events[-1].detail == "engagement email_reply"
    assert "replied" in stage.kinds()
    stage.tick(T0 + timedelta(days=10))
    assert len(stage.emails) == 1


def test_an_unsubscribe_suppresses_every_address_of_the_person() -> None:
    stage = Stage()
    stage.snapshot(web_lead(), T0)
    stage.tick(T0)
    send_id = stage.emails[0].send_id
    out = Engagement(event_id=f"nurture:{send_id}:unsubscribe", kind="email_unsubscribe", at=T0)
    lead = web_lead(emails=["ana@contoso.com", "ana.lima@gmail.com"], engagements=[out])
    stage.snapshot(lead, T0 + timedelta(minutes=5))
    assert sorted(stage.suppressed) == sorted(
        identifier_hash(a) for a in ("ana@contoso.com", "ana.lima@gmail.com")
    )
    assert stage.kinds("welcome") == ["enrolled", "unsubscribed", "exited"]
    stage.snapshot(lead, T0 + timedelta(minutes=6))  # the same snapshot again: once
    assert len(stage.suppressed) == 2


def test_no_consent_no_email_and_it_says_why() -> None:
    stage = Stage()
    stage.snapshot(web_lead(consent=None), T0)
    stage.tick(T0)
    assert stage.emails == []
    skipped = [e for e in stage.events if e.kind == "skipped"]
    assert skipped
    assert "consent" in skipped[0].detail


def test_a_pricing_page_lingerer_gets_the_reasons_email_unless_a_demo_was_asked() -> None:
    views = [
        Engagement(event_id=f"v{n}", kind="pricing_page_visit", at=T0 - timedelta(days=n * 4))
        for n in range(3)
    ]
    stage = Stage()
    stage.snapshot(web_lead(touches=[], engagements=views[:2]), T0)
    assert "pricing_lingerer" not in {e.sequence for e in stage.events}
    stage.snapshot(web_lead(touches=[], engagements=views), T0)
    stage.tick(T0)
    assert [e.template for e in stage.emails] == ["reasons"]
    demo = Engagement(event_id="d1", kind="demo_requested", at=T0 - timedelta(days=1))
    other = Stage()
    other.snapshot(web_lead(touches=[], engagements=[*views, demo]), T0)
    other.tick(T0)
    assert other.emails == []


def test_the_frequency_cap_holds_an_email_back_until_the_window_allows_it() -> None:
    rules = load_nurture(CONFIG)
    rules = rules.model_copy(
        update={"frequency_cap": rules.frequency_cap.model_copy(update={"max_emails": 1})}
    )
    stage = Stage(rules)
    views = [Engagement(event_id=f"v{n}", kind="pricing_page_visit", at=T0) for n in range(3)]
    stage.snapshot(web_lead(engagements=views), T0)
    assert {e.sequence for e in stage.events} == {"welcome", "pricing_lingerer"}
    stage.tick(T0)
    assert [e.template for e in stage.emails] == ["welcome"]  # reasons waits its turn
    stage.tick(T0 + timedelta(days=6, hours=23))
    assert [e.template for e in stage.emails] == ["welcome"]
    stage.tick(T0 + timedelta(days=7, minutes=1))
    assert [e.template for e in stage.emails] == ["welcome", "features"]
    stage.tick(T0 + timedelta(days=14, minutes=2))
    assert [e.template for e in stage.emails] == ["welcome", "features", "reasons"]
    gaps = [b.due_at - a.due_at for a, b in zip(stage.emails, stage.emails[1:], strict=False)]
    assert all(gap >= timedelta(days=7) for gap in gaps)


def test_a_call_task_is_closed_by_a_call_and_keeps_its_outcome() -> None:
    stage = Stage()
    mql = web_lead(touches=[], stage="mql", owner="r1", owner_name="Rita")
    stage.snapshot(mql, T0)
    stage.tick(T0)
    (task,) = [e for e in stage.events if e.kind == "task_created"]
    assert task.owner == "r1"
    assert task.due_at == T0 + timedelta(hours=4)
    call_at = T0 + timedelta(hours=5)
    called = mql.model_copy(
        update={
            "touches": [
                Touch(
                    event_id="c1", channel="call", source="call_center", medium="phone", at=call_at
                )
            ],
            "engagements": [
                Engagement(
                    event_id="call:1:connected",
                    kind="call_connected",
                    at=call_at,
                    duration_s=300,
                    outcome="interested",
                )
            ],
            "updated_at": call_at,
        }
    )
    stage.snapshot(called, call_at)
    (done,) = [e for e in stage.events if e.kind == "task_done"]
    assert done.at == call_at
    assert done.detail == "interested"
    assert done.due_at == task.due_at
    stage.snapshot(called, call_at)  # the same snapshot again closes nothing twice
    assert stage.kinds().count("task_done") == 1


def test_a_lost_lead_is_won_back_after_thirty_days_and_a_click_brings_a_call() -> None:
    stage = Stage()
    lost = web_lead(touches=[], stage="lost", stage_at=T0, owner="r1")
    stage.snapshot(lost, T0)
    stage.tick(T0 + timedelta(days=29))
    assert "win_back" not in {e.sequence for e in stage.events}
    stage.tick(T0 + timedelta(days=30, hours=1))
    assert [e.template for e in stage.emails] == ["win_back"]
    send_id = stage.emails[0].send_id
    click_at = T0 + timedelta(days=31)
    click = Engagement(event_id=f"nurture:{send_id}:click:0", kind="email_click", at=click_at)
    stage.snapshot(
        lost.model_copy(update={"engagements": [click], "updated_at": click_at}), click_at
    )
    (clicked,) = [e for e in stage.events if e.kind == "clicked"]
    assert (clicked.sequence, clicked.step) == ("win_back", "win_back")
    stage.tick(T0 + timedelta(days=37, hours=2))
    tasks = [e for e in stage.events if e.kind == "task_created"]
    assert [(t.sequence, t.step, t.owner) for t in tasks] == [("win_back", "call", "r1")]


def test_a_lost_lead_that_comes_back_before_thirty_days_is_not_won_back() -> None:
    stage = Stage()
    stage.snapshot(web_lead(touches=[], stage="lost", stage_at=T0), T0)
    back = T0 + timedelta(days=10)
    stage.snapshot(web_lead(touches=[], stage="re_engaged", stage_at=back, updated_at=back), back)
    stage.tick(T0 + timedelta(days=31))
    assert stage.emails == []
    assert "win_back" not in {e.sequence for e in stage.events}


def test_an_erased_lead_is_forgotten_with_its_timers_and_stays_forgotten() -> None:
    stage = Stage()
    stage.snapshot(web_lead(), T0)
    stage.forget("L1", T0)
    assert stage.table["lead|L1"] == {"lead_id": "L1", "gone": "erased"}  # nothing of them
    assert not any(k.startswith("due|") for k in stage.table)
    # A snapshot that was on its way when the person was erased brings nothing back.
    stage.snapshot(web_lead(), T0 + timedelta(seconds=1))
    assert stage.table["lead|L1"] == {"lead_id": "L1", "gone": "erased"}
    stage.tick(T0 + timedelta(days=5))
    assert stage.emails == []
    assert stage.kinds("welcome") == ["enrolled", "exited"]
    assert not any(k.startswith("due-") for k in stage.table)  # the tick tidied the index
    stage.forget("L2", T0)  # erased before any snapshot of it arrived: a tombstone too
    stage.snapshot(web_lead(lead_id="L2"), T0)
    assert stage.kinds() == ["enrolled", "exited"]


def test_a_merged_lead_drops_its_tasks_and_an_unmerge_brings_it_back() -> None:
    stage = Stage()
    mql = web_lead(touches=[], stage="mql", owner="r1")
    stage.snapshot(mql, T0)
    stage.tick(T0)
    assert stage.kinds("first_call") == ["enrolled", "task_created", "exited"]
    merged = mql.model_copy(update={"merged_into": "L9", "updated_at": T0})
    stage.snapshot(merged, T0 + timedelta(minutes=1))
    dropped = stage.events[-1]
    assert (dropped.kind, dropped.detail) == ("exited", "task dropped: merged into L9")
    assert dropped.send_id == stage.events[1].send_id  # the task's id
    back = web_lead(touches=[], stage="sql", owner="r1", updated_at=T0 + timedelta(hours=1))
    stage.snapshot(back, T0 + timedelta(hours=1))
    lost = back.model_copy(update={"stage": "lost", "stage_at": T0 + timedelta(hours=2)})
    stage.snapshot(lost, T0 + timedelta(hours=2))
    stage.tick(T0 + timedelta(days=31, hours=3))  # a Thursday, 14:00 in Berlin
    assert [e.template for e in stage.emails] == ["win_back"]


def test_timers_are_bucketed_so_no_write_grows_with_every_enrolled_lead() -> None:
    stage = Stage()
    for n in range(500):
        stage.snapshot(web_lead(lead_id=f"L{n}", email=f"p{n}@contoso.com"), T0)
    buckets = {k: v for k, v in stage.table.items() if k.startswith("due|")}
    assert len(buckets) > 32
    assert max(len(v) for v in buckets.values()) < 40
    stage.tick(T0)
    assert len(stage.emails) == 500
    (minutes,) = [v for k, v in stage.table.items() if k.startswith("due-minutes|")]
    assert minutes == ["2026-03-05T10:00"]


class CountingTable(dict[str, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes += 1
        super().__setitem__(key, value)


def test_a_tick_before_the_due_time_and_a_snapshot_changing_nothing_write_nothing() -> None:
    stage = Stage()
    stage.table = CountingTable()
    lead = web_lead(at=T0 + timedelta(seconds=30))
    stage.snapshot(lead, T0 + timedelta(seconds=30))
    written = stage.table.writes
    stage.tick(T0 + timedelta(seconds=10))  # same minute, before the welcome is due
    stage.snapshot(lead, T0 + timedelta(seconds=40))  # the same snapshot again
    assert stage.table.writes == written
    assert stage.emails == []
    stage.tick(T0 + timedelta(seconds=31))
    assert len(stage.emails) == 1


def test_a_bad_command_is_a_dead_letter() -> None:
    stage = Stage()
    record = stage._record(TOPICS.nurture_commands, b'{"type": "tick", "now": "soon"}')
    nurture_step(record, stage.table, stage, topics=TOPICS, rules=stage.rules, now=T0)
    assert len(stage.dead) == 1


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("{first_name},\n\n        thank", "{frist_name},\n\n        thank"),
            ":22: templates.welcome.en: Value error, body: unknown variable {frist_name}",
        ),
        (("- {name: welcome, email: welcome}", "- {name: welcome, email: welcom}"), ":88: "),
        (("within: 14d", "within: 14 days"), ":95: sequences.pricing_lingerer"),
    ],
)
def test_config_errors_name_the_file_and_line(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    text = (CONFIG / "nurture.yaml").read_text("utf-8")
    assert change[0] in text
    (tmp_path / "nurture.yaml").write_text(text.replace(change[0], change[1], 1), "utf-8")
    with pytest.raises(ConfigurationError) as caught:
        load_nurture(tmp_path)
    assert f"nurture.yaml{expected}" in str(caught.value)
