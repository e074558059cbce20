"""`config/nurture.yaml`: follow-up sequences, their templates and the frequency cap.

Validated when a worker or server starts. Every error names the file and the
line of the value at fault (`config/nurture.yaml:42: sequences.welcome.steps.1.
email: no template 'welcom'`), including a template variable leadflow does not
know: a typo there would otherwise reach the customer as `{frist_name}`.

Durations are written `30m`, `4h`, `3d` or `2w`.
"""

from __future__ import annotations

import re
import string
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from leadflow.errors import ConfigurationError
from leadflow.settings import known_time_zone
from schemas.envelope import Channel

FILE_NAME = "nurture.yaml"
DONE = "done"  # a branch target that ends the sequence

# What a template may name: the lead's fields as the nurture agent keeps them.
VARIABLES = frozenset(
    {"first_name", "last_name", "full_name", "company", "title", "country", "owner_name"}
)
LOCALES = ("en", "zh")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WORKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri")


def parse_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration such as 30m, 4h, 3d or 2w")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Text(_Rule):
    subject: str = Field(min_length=1, max_length=300)
    body: str = Field(min_length=1)

    @model_validator(mode="after")
    def _known_variables(self) -> Text:
        for part, text in (("subject", self.subject), ("body", self.body)):
            for name in template_variables(text):
                if name not in VARIABLES:
                    known = ", ".join(sorted(VARIABLES))
                    raise ValueError(f"{part}: unknown variable {{{name}}}; known: {known}")
        return self


class Template(_Rule):
    en: Text
    zh: Text | None = None
    links: list[Annotated[str, Field(pattern=r"^https?://\S+$")]] = Field(default_factory=list)

    def text(self, locale: str) -> Text:
        return self.zh if locale == "zh" and self.zh is not None else self.en


class NewLeadTrigger(_Rule):
    channels: list[Channel] = Field(default_factory=list, description="Any channel when empty.")
    sources: list[str] = Field(default_factory=list)
    forms: list[str] = Field(default_factory=list, description="`form_id` attributes.")


class EngagementTrigger(_Rule):
    kind: str
    at_least: int = Field(default=1, ge=1)
    within: Duration = timedelta(days=14)
    without: list[str] = Field(
        default_factory=list, description="Engagement kinds that keep the lead out."
    )


class StageTrigger(_Rule):
    stages: list[str] = Field(min_length=1)
    after: Duration = Field(
        default=timedelta(0), description="How long the lead must stay in the stage first."
    )


class Trigger(_Rule):
    new_lead: NewLeadTrigger | None = None
    engagement: EngagementTrigger | None = None
    stage: StageTrigger | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Trigger:
        given = [n for n in ("new_lead", "engagement", "stage") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("a trigger is exactly one of new_lead, engagement, stage")
        return self


class CallTask(_Rule):
    due_within: Duration


class Branch(_Rule):
    # `if` is a keyword: the YAML key is `if`.
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    condition: Literal["opened", "clicked", "replied"] = Field(alias="if")
    goto: str = Field(description="The step to go on with when the condition holds.")
    otherwise: str | None = Field(
        default=None, description="The step when it does not (default: the next; `done` ends)."
    )


class Step(_Rule):
    name: str = Field(pattern=r"^[a-z0-9_]{1,40}$")
    wait: Duration | None = None
    email: str | None = None
    call_task: CallTask | None = None
    branch: Branch | None = None
    business_hours: bool = Field(
        default=False, description="Move the step into the lead's business hours."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Step:
        given = [
            n for n in ("wait", "email", "call_task", "branch") if getattr(self, n) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"step {self.name}: exactly one of wait, email, call_task, branch; got {given}"
            )
        return self


class Exit(_Rule):
    stages: list[str] = Field(default_factory=list)
    engagements: list[str] = Field(default_factory=list)


class Sequence(_Rule):
    trigger: Trigger
    steps: list[Step] = Field(min_length=1)
    exit: Exit = Exit()
    once: bool = Field(default=True, description="A lead goes through it at most once.")

    @model_validator(mode="after")
    def _steps(self) -> Sequence:
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names repeat: {names}")
        for step in self.steps:
            if step.branch is None:
                continue
            for target in (step.branch.goto, step.branch.otherwise):
                if target is not None and target != DONE and target not in names:
                    raise ValueError(f"step {step.name}: {target!r} is no step (nor {DONE})")
        return self


class BusinessHours(_Rule):
    start: time = time(9)
    end: time = time(18)
    days: list[Weekday] = Field(default_factory=lambda: list(_WORKDAYS), min_length=1)
    default_time_zone: str = "UTC"
    time_zones: dict[str, str] = Field(
        default_factory=dict, description="Country code -> IANA time zone of its leads."
    )

    @field_validator("default_time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return known_time_zone(value)

    @field_validator("time_zones")
    @classmethod
    def _zones(cls, value: dict[str, str]) -> dict[str, str]:
        return {country.upper(): known_time_zone(zone) for country, zone in value.items()}

    def weekday_open(self, weekday: int) -> bool:
        return _DAYS[weekday] in self.days


class FrequencyCap(_Rule):
    max_emails: int = Field(default=3, ge=1)
    per: Duration = timedelta(days=7)


class NurtureRules(_Rule):
    frequency_cap: FrequencyCap = FrequencyCap()
    business_hours: BusinessHours = BusinessHours()
    zh_countries: frozenset[str] = frozenset({"CN", "TW", "HK", "MO"})
    legal_basis_without_consent: bool = Field(
        default=False,
        description="Mail leads that gave no consent (a configured legitimate interest); "
        "a lead that refused consent is never mailed.",
    )
    templates: dict[str, Template] = Field(default_factory=dict)
    sequences: dict[str, Sequence] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _templates_exist(self) -> NurtureRules:
        for name, sequence in self.sequences.items():
            for index, step in enumerate(sequence.steps):
                if step.email is not None and step.email not in self.templates:
                    raise ValueError(
                        f"sequences.{name}.steps.{index}.email: no template {step.email!r}"
                    )
        return self


def template_variables(text: str) -> list[str]:
    """The `{name}` fields of a template text (`{{` is a literal brace)."""
    try:
        return [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
    except ValueError as exc:
        raise ValueError(f"unbalanced braces: {exc}") from exc


def _lines(node: yaml.Node, path: tuple[Any, ...], found: dict[tuple[Any, ...], int]) -> None:
    found[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            found[(*path, key.value)] = key.start_mark.line + 1
            _lines(value, (*path, key.value), found)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*path, index), found)


def _line_of(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int:
    path = tuple(str(p) if not isinstance(p, int) else p for p in loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get((), 1)


def _loc_from_message(message: str) -> tuple[Any, ...]:
    """`sequences.x.steps.1.email: ...` in a model validator's message: the path it names
    (from the file's top, or from the model that raised it)."""
    head = message.split(":", 1)[0].removeprefix("Value error, ")
    if not re.fullmatch(r"[\w.]+", head):
        return ()
    return tuple(int(p) if p.isdigit() else p for p in head.split("."))


def _line_of_variable(message: str, text: str, from_line: int) -> int:
    """For an unknown template variable: the line of the file that holds it (inside a
    multi-line body), searched from the line of the text it is in."""
    found = re.search(r"unknown variable (\{[^}]*\})", message)
    if not found:
        return from_line
    for number, line in enumerate(text.splitlines()[from_line - 1 :], start=from_line):
        if found.group(1) in line:
            return number
    return from_line


def load_nurture(folder: Path) -> NurtureRules:
    """The sequences of `folder/nurture.yaml`; none when the file is absent."""
    path = folder / FILE_NAME
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return NurtureRules()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path} is not valid YAML: {exc}") from exc
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _lines(node, (), lines)
    try:
        return NurtureRules.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            named = _loc_from_message(err["msg"])
            candidates = [named, (*loc, *named)] if named else []
            line = _line_of(next((c for c in candidates if c in lines), loc), lines)
            line = _line_of_variable(err["msg"], text, line)
            where = ".".join(str(p) for p in loc) or "(top)"
            problems.append(f"{path}:{line}: {where}: {err['msg']}")
        raise ConfigurationError("; ".join(problems)) from exc
