"""Synthetic leads from every channel, with known duplicates, for tests, demos and benchmarks.

Each generated person has a ground-truth id; a share of them come back
through other channels with the traps real data has: upper-case emails,
full-width digits, `0086` prefixes, a phone-only call, a badge scan with the
name and company but a personal mailbox. Deterministic for a given seed.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import phonenumbers

from schemas import RawLead

_FAMILY = ["王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴"]
_GIVEN = ["伟", "芳", "娜", "敏", "静", "磊", "洋", "艳", "勇", "军", "杰", "婷"]
_FIRST = [
    "Ada",
    "Grace",
    "Alan",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Dennis",
    "Frances",
    "John",
    "Radia",
    "Edsger",
    "Sophie",
    "Tim",
    "Hedy",
    "Donald",
]
_LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Ritchie",
    "Allen",
    "Backus",
    "Perlman",
    "Dijkstra",
    "Wilson",
    "Berners",
    "Lamarr",
    "Knuth",
]
_COMPANIES_CN = [
    "示例科技有限公司",
    "华北制造股份有限公司",
    "云帆软件有限公司",
    "东方零售集团有限公司",
    "远航金融科技有限公司",
    "星河互联网有限公司",
]
_COMPANIES_EN = [
    "Fabrikam S.A.",
    "Contoso Ltd",
    "Northwind Traders Inc.",
    "Tailspin Toys GmbH",
    "Wide World Importers LLC",
    "Adventure Works Corp.",
    "Litware, Inc.",
    "Proseware Co., Ltd.",
]
_TITLES = [
    "Marketing Director",
    "VP Sales",
    "IT Manager",
    "Engineer",
    "CEO",
    "Analyst",
    "销售总监",
    "总经理",
    "采购经理",
    "工程师",
    "Student",
]
_SOURCES = [
    ("google", "cpc"),
    ("baidu", "cpc"),
    ("linkedin", "paid_social"),
    ("douyin", "paid_social"),
    ("xiaohongshu", "social"),
    ("", ""),
]
_FREE_MAIL = ["gmail.com", "qq.com", "163.com", "outlook.com"]


@dataclass
class Person:
    person_id: str
    full_name: str
    email: str
    phone_digits: str
    country: str
    company: str
    title: str
    size: int
    chinese: bool


@dataclass
class Sample:
    """The generated envelopes and, for each, the person it truly belongs to."""

    envelopes: list[RawLead] = field(default_factory=list)
    person_of_event: dict[str, str] = field(default_factory=dict)
    persons: dict[str, Person] = field(default_factory=dict)


def _person(rng: random.Random, index: int) -> Person:
    chinese = rng.random() < 0.5
    if chinese:
        name = rng.choice(_FAMILY) + rng.choice(_GIVEN) + rng.choice(_GIVEN)
        company = rng.choice(_COMPANIES_CN)
        phone = f"13{rng.randint(0, 9)}{rng.randint(10_000_000, 99_999_999)}"
        country = "CN"
        domain = f"corp{_COMPANIES_CN.index(company)}.example.cn"
        local = f"user{index}"
    else:
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        name = f"{first} {last}"
        company = rng.choice(_COMPANIES_EN)
        country = rng.choice(["US", "GB", "DE", "SG"])
        phone = _valid_number(rng, country)
        domain = company.split()[0].strip(",").lower() + ".example.com"
        local = f"{first.lower()}.{last.lower()}{index}"
    return Person(
        person_id=f"p{index:05d}",
        full_name=name,
        email=f"{local}@{domain}",
        phone_digits=phone,
        country=country,
        company=company,
        title=rng.choice(_TITLES),
        size=rng.choice([20, 80, 300, 1200, 5000]),
        chinese=chinese,
    )


def _valid_number(rng: random.Random, country: str) -> str:
    """A national number phonenumbers accepts as valid for `country`."""
    while True:
        digits = {
            "US": f"415555{rng.randint(1000, 9999)}",
            "GB": f"2079460{rng.randint(100, 999)}",
            "DE": f"30{rng.randint(1_000_000, 9_999_999)}",
            "SG": f"6{rng.randint(1_000_000, 9_999_999)}",
        }[country]
        if phonenumbers.is_valid_number(phonenumbers.parse(digits, country)):
            return digits


def _phone(person: Person, variant: int) -> str:
    if person.chinese:
        digits = person.phone_digits
        return [
            digits,
            "0086 " + digits,
            "".join(chr(ord(c) + 0xFEE0) for c in digits),
            "+86-" + digits,
        ][variant % 4]
    code = {"US": "1", "GB": "44", "DE": "49", "SG": "65"}[person.country]
    national = person.phone_digits if person.country in ("US", "SG") else "0" + person.phone_digits
    # Records that carry the person's country may use the national form.
    return [f"+{code} {person.phone_digits}", f"00{code} {person.phone_digits}", national][
        variant % 3
    ]


def _envelope(
    rng: random.Random, person: Person, channel: str, at: datetime, variant: int
) -> RawLead:
    fields: dict[str, str] = {}
    if channel == "web":
        fields = {
            "name": person.full_name,
            "email": person.email.upper() if variant % 2 else person.email,
            "company": person.company,
            "country": person.country,
            "title": person.title,
            "employees": str(person.size),
        }
        source, medium = rng.choice(_SOURCES)
        if source:
            fields.update(
                {
                    "utm_source": source,
                    "utm_medium": medium,
                    "utm_campaign": f"launch-{variant % 3}",
                }
            )
    elif channel == "social":
        fields = {
            "full_name": person.full_name,
            "email": person.email,
            "phone_number": _phone(person, variant),
            "company_name": person.company,
            "country": person.country,
        }
    elif channel == "tradeshow":
        # A badge scan: name, company, phone; sometimes a personal mailbox.
        fields = {
            "姓名" if person.chinese else "name": person.full_name,
            "公司" if person.chinese else "company": person.company,
            "手机" if person.chinese else "mobile": _phone(person, variant + 1),
            "title": person.title,
            "event": "CIIE 2026" if person.chinese else "SaaStr",
            "country": person.country,
        }
        if variant % 3 == 0:
            fields["email"] = f"{person.person_id}@{rng.choice(_FREE_MAIL)}"
    else:  # call: only the number is known
        fields = {"phone": _phone(person, variant + 2), "country": person.country}
    event_id = str(uuid.UUID(int=rng.getrandbits(128)))
    return RawLead(
        event_id=event_id,
        channel=channel,
        source_system={
            "web": "web_form",
            "social": "meta_lead_ads",
            "tradeshow": "badge_scan",
            "call": "call_center",
        }[channel],
        received_at=at,
        fields=fields,
    )


_USUAL_START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
# Envelopes are 1-90 s apart and a person makes at most a few: a bound on the time a
# run of persons spans, so a large run can start early enough to end in the past.
_MOST_PER_PERSON = timedelta(seconds=3 * 90)


def _default_start(persons: int) -> datetime:
    """The usual start, unless the run would reach the future (where an adapter refuses
    a receive time): a million people span years, and then end an hour before now."""
    latest = datetime.now(UTC) - timedelta(hours=1) - persons * _MOST_PER_PERSON
    return min(_USUAL_START, latest)


def generate(
    persons: int, duplicate_share: float = 0.3, seed: int = 7, start: datetime | None = None
) -> Sample:
    """`persons` people; `duplicate_share` of them come back through another channel."""
    rng = random.Random(seed)  # noqa: S311 - reproducible sample data, not secrets
    at = start or _default_start(persons)
    sample = Sample()
    later: list[tuple[Person, str, int]] = []
    taken: set[tuple[str, str]] = set()
    for index in range(persons):
        person = _person(rng, index)
        # Two different people with one name at one company cannot be told apart by any
        # rule; the generator keeps (name, company) unique so its truth is knowable.
        tries = 0
        while (person.full_name, person.company) in taken:
            tries += 1
            person = _person(rng, index)
            if tries > 20:  # the name pools are spent: a branch office keeps people apart
                person = replace(person, company=f"{person.company} {index}")
        taken.add((person.full_name, person.company))
        sample.persons[person.person_id] = person
        channel = rng.choice(["web", "web", "social", "tradeshow"])
        envelope = _envelope(rng, person, channel, at, index)
        sample.envelopes.append(envelope)
        sample.person_of_event[envelope.event_id] = person.person_id
        at += timedelta(seconds=rng.randint(1, 90))
        if rng.random() < duplicate_share:
            later.append((person, rng.choice(["web", "social", "tradeshow", "call"]), index + 1))
    for person, channel, variant in later:
        envelope = _envelope(rng, person, channel, at, variant)
        sample.envelopes.append(envelope)
        sample.person_of_event[envelope.event_id] = person.person_id
        at += timedelta(seconds=rng.randint(1, 90))
    return sample
