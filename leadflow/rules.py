"""The rule files under `config/`, validated by pydantic when a worker starts.

A typo in a rule file stops the start with the file, the rule and the field
at fault (ConfigurationError), instead of silently scoring or routing wrong.
"""

from __future__ import annotations

import re
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from leadflow.errors import ConfigurationError
from leadflow.nurture_rules import NurtureRules, load_nurture
from leadflow.settings import known_time_zone


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# Identity ------------------------------------------------------------------


class MatchRule(_Rule):
    name: str
    key: Literal["email", "phone", "company", "domain"]
    name_threshold: Annotated[float, Field(ge=50, le=100)] | None = None

    @model_validator(mode="after")
    def _fuzzy_needs_threshold(self) -> MatchRule:
        if self.key in ("company", "domain") and self.name_threshold is None:
            raise ValueError(f"rule {self.name}: key {self.key} needs name_threshold")
        return self


class IdentityRules(_Rule):
    rules: list[MatchRule]
    free_mail_domains: frozenset[str] = frozenset()
    fresher_overrides: dict[str, list[str]] = Field(default_factory=dict)
    max_names_per_key: Annotated[int, Field(ge=1)] = 500


# Source tagging ------------------------------------------------------------


class SourceRules(_Rule):
    click_ids: dict[str, tuple[str, str]] = Field(default_factory=dict)
    referrers: dict[str, tuple[str, str]] = Field(default_factory=dict)
    channel_defaults: dict[str, tuple[str, str]] = Field(default_factory=dict)


# Scoring -------------------------------------------------------------------

Op = Literal["gte", "lte", "between", "in", "matches", "present", "free_mail", "not_free_mail"]


class FieldRule(_Rule):
    name: str
    field: Literal[
        "company_size",
        "industry",
        "title",
        "country",
        "phone",
        "email",
        "email_domain",
        "source",
        "channel",
    ]
    op: Op
    value: Any = None
    points: float

    @model_validator(mode="after")
    def _value_fits_op(self) -> FieldRule:
        if self.op in ("gte", "lte") and not isinstance(self.value, int | float):
            raise ValueError(f"rule {self.name}: op {self.op} needs a number")
        if self.op == "between" and not (isinstance(self.value, list) and len(self.value) == 2):
            raise ValueError(f"rule {self.name}: op between needs [low, high]")
        if self.op == "in" and not isinstance(self.value, list):
            raise ValueError(f"rule {self.name}: op in needs a list")
        if self.op == "matches":
            try:
                re.compile(str(self.value))
            except re.error as exc:
                raise ValueError(f"rule {self.name}: bad pattern: {exc}") from exc
        return self


class EngagementRule(_Rule):
    name: str
    event: str
    points: float
    half_life_days: Annotated[float, Field(gt=0)]


Positive = Literal["won", "convert"]
Negative = Literal["lost", "disqualify"]
_POSITIVE: tuple[Positive, ...] = ("won", "convert")
_NEGATIVE: tuple[Negative, ...] = ("lost", "disqualify")


class ModelRules(_Rule):
    """The learned part of the score (streams/learning.py)."""

    enabled: bool = True
    min_outcomes: Annotated[int, Field(ge=1)] = Field(
        default=50, description="Rules alone until the model learned this many outcomes."
    )
    weight: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.5, description="score = (1 - weight) * rules + weight * 100 * fit probability"
    )
    publish_every: Annotated[int, Field(ge=1)] = Field(
        default=10, description="A new model version after this many outcomes."
    )
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 0.02
    l2: Annotated[float, Field(ge=0, le=1)] = 0.001
    tool_fields: list[str] = Field(
        default_factory=list, description="Attributes whose values name the tools a lead uses."
    )
    positive: list[Positive] = Field(default_factory=lambda: list(_POSITIVE))
    negative: list[Negative] = Field(default_factory=lambda: list(_NEGATIVE))
    factors_shown: Annotated[int, Field(ge=1, le=20)] = 5
    rescore_when_weight_moves: Annotated[float, Field(gt=0)] = Field(
        default=0.1,
        description="A new version re-scores the open leads when a weight moved this much "
        "(log-odds) since the version they were last re-scored for.",
    )
    rescore_per_s: Annotated[float, Field(gt=0)] = Field(
        default=200.0, description="Open leads re-scored per second and worker, at most."
    )


class ScoringRules(_Rule):
    mql_threshold: Annotated[float, Field(ge=0, le=100)]
    grades: dict[Literal["A", "B", "C"], float]
    fit: list[FieldRule] = Field(default_factory=list)
    engagement: list[EngagementRule] = Field(default_factory=list)
    negative: list[FieldRule] = Field(default_factory=list)
    model: ModelRules = ModelRules()

    @model_validator(mode="after")
    def _grades_descend(self) -> ScoringRules:
        a, b, c = self.grades.get("A"), self.grades.get("B"), self.grades.get("C")
        if a is None or b is None or c is None or not a > b > c:
            raise ValueError("grades need A > B > C thresholds")
        return self


# Routing -------------------------------------------------------------------


class Criteria(_Rule):
    country: list[str] | None = None
    industry: list[str] | None = None
    source: list[str] | None = None
    channel: list[str] | None = None
    min_score: float | None = None
    min_company_size: int | None = None
    max_company_size: int | None = None


class AssignmentRule(_Rule):
    name: str
    team: str
    when: Criteria = Criteria()


Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_ALL_DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Rep(_Rule):
    id: str
    name: str
    email: str | None = None
    weight: Annotated[int, Field(ge=1, le=100)] = 1
    capacity: Annotated[int, Field(ge=1)] = 100
    timezone: str = "UTC"
    hours: str | None = Field(default=None, description="Working hours, e.g. 09:00-18:00.")
    days: list[Day] = Field(default_factory=lambda: list(_ALL_DAYS))
    out_of_office: bool = False

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_time_zone(value)

    @field_validator("hours")
    @classmethod
    def _hours_range(cls, value: str | None) -> str | None:
        if value is not None:
            working_hours(value)
        return value


def working_hours(value: str) -> tuple[time, time]:
    match = re.fullmatch(r"(\d{2}):(\d{2})-(\d{2}):(\d{2})", value.strip())
    if not match:
        raise ValueError(f"hours must look like 09:00-18:00, got {value!r}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59:
        raise ValueError(f"hours out of range: {value!r}")
    return time(h1, m1), time(min(h2, 23), m2 if h2 < 24 else 59)


class Notify(_Rule):
    kind: Literal["log", "slack", "wecom", "dingtalk", "email"] = "log"
    url: str | None = None
    email_to: str | None = None

    @model_validator(mode="after")
    def _target(self) -> Notify:
        if self.kind in ("slack", "wecom", "dingtalk") and not self.url:
            raise ValueError(f"notify kind {self.kind} needs url")
        return self


class Team(_Rule):
    reps: list[Rep]
    notify: Notify = Notify()
    sla_minutes: Annotated[
        float, Field(gt=0, description="A rep who has not accepted by then loses the lead.")
    ] = 60

    @field_validator("reps")
    @classmethod
    def _some_reps(cls, value: list[Rep]) -> list[Rep]:
        if not value:
            raise ValueError("a team needs at least one rep")
        if len({rep.id for rep in value}) != len(value):
            raise ValueError("rep ids repeat inside the team")
        return value


class RoutingRules(_Rule):
    rules: list[AssignmentRule]
    teams: dict[str, Team]

    @model_validator(mode="after")
    def _teams_exist(self) -> RoutingRules:
        for rule in self.rules:
            if rule.team not in self.teams:
                raise ValueError(f"rule {rule.name} names unknown team {rule.team}")
        if not self.rules or self.rules[-1].when != Criteria():
            raise ValueError("the last routing rule must match every lead (when: {})")
        return self


# Funnel stages -------------------------------------------------------------

Trigger = Literal["assigned", "call_connected", "call_outcome", "score_mql", "engagement"]


class StageDef(_Rule):
    name: str
    probability: Annotated[float, Field(ge=0, le=1)] = 0.0


class WorkflowRule(_Rule):
    # Not `on`: YAML 1.1 reads a bare `on` as true.
    trigger: Trigger
    to: str
    reason: str = ""
    min_duration_s: int | None = None
    outcome: str | None = None
    kind: str | None = None


MERGED = "merged"  # not a configured stage: a lead that turned out to be another leaves by it


class StageRules(_Rule):
    stages: list[StageDef]
    closed: list[str] = Field(default_factory=lambda: ["lost", "disqualified"])
    workflow: list[WorkflowRule] = Field(default_factory=list)
    responses: list[str] = Field(
        default_factory=lambda: ["email_reply", "email_click", "demo_requested"],
        description="Engagement kinds that count as the person answering: one of them "
        "re-engages a lost or disqualified lead, which goes back to its previous owner.",
    )

    @model_validator(mode="after")
    def _known_stages(self) -> StageRules:
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names) or not names or names[0] != "new":
            raise ValueError("stages must be unique and start with new")
        for rule in self.workflow:
            if rule.to not in names and rule.to not in self.closed:
                raise ValueError(
                    f"workflow rule on {rule.trigger} moves to unknown stage {rule.to}"
                )
        return self

    def order(self, stage: str) -> int | None:
        """Position in the funnel; None for a closed stage (lost, disqualified)."""
        for index, definition in enumerate(self.stages):
            if definition.name == stage:
                return index
        return None

    def probability(self, stage: str) -> float:
        return next((s.probability for s in self.stages if s.name == stage), 0.0)


class FormConfig(_Rule):
    public_token: str | None = None
    origins: list[str] = Field(default_factory=list)
    min_fill_seconds: float | None = Field(default=None, ge=0)

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not origin.startswith(("https://", "http://")) or origin.count("/") != 2:
                raise ValueError(f"{origin!r} is not an origin such as https://www.example.com")
        return [origin.lower() for origin in value]


class FormRules(_Rule):
    honeypot_field: str = "_hp"
    started_at_field: str = "_started_at"
    min_fill_seconds: float = Field(default=2.0, ge=0)
    forms: dict[str, FormConfig] = Field(default_factory=dict)


class Rules(_Rule):
    identity: IdentityRules
    sources: SourceRules
    scoring: ScoringRules
    routing: RoutingRules
    stages: StageRules
    forms: FormRules
    nurture: NurtureRules = NurtureRules()


_FILES: dict[str, type[BaseModel]] = {
    "identity": IdentityRules,
    "sources": SourceRules,
    "scoring": ScoringRules,
    "routing": RoutingRules,
    "stages": StageRules,
    "forms": FormRules,
}


def default_rules_dir() -> Path:
    """`config/` of the working directory, else the one beside the installed packages."""
    local = Path("config")
    if (local / "routing.yaml").exists():
        return local
    return Path(__file__).resolve().parents[1] / "config"


def load_rules(folder: Path | None = None) -> Rules:
    folder = folder or default_rules_dir()
    parts: dict[str, Any] = {}
    for name, model in _FILES.items():
        path = folder / f"{name}.yaml"
        try:
            data = yaml.safe_load(path.read_text("utf-8")) or {}
            parts[name] = model.model_validate(data)
        except FileNotFoundError as exc:
            raise ConfigurationError(f"rule file missing: {path}") from exc
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"{path} is not valid YAML: {exc}") from exc
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigurationError(f"{path}: {problems}") from exc
    return Rules(**parts, nurture=load_nurture(folder))
