"""Stage `identity` (pure part): is this lead someone we already know?

The identity index is partitioned by match key (`email:…`, `phone:…`,
`company:…`, `domain:…`), so a new lead travels a chain: one hop per key,
re-keyed through the `identity.keys` topic, each hop owned by exactly one
partition. `visit_key` is one hop. It never reads state of another key:

- an exact key (email, phone) maps to the lead that first claimed it;
- a fuzzy key (company, email domain) holds the names seen under it, and a
  name at least `name_threshold` similar (rapidfuzz token-sort ratio) matches.

When the hop finds another lead, the earliest of the two (first-seen time,
then id) survives; the other is recorded in `absorbed`, and the lead stage
(keyed by lead id) merges it. Keys keep pointing at whichever lead claimed
them; the lead stage redirects a merged id to its survivor.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Any

from rapidfuzz import fuzz

from schemas import IdentityProbe, Lead, MatchRecord
from schemas.lead_state import MatchKey
from streams.rules import IdentityRules
from streams.scoring import email_domain


def name_key(name: str) -> str:
    """A name for fuzzy comparison: NFKC, case-folded, punctuation gone, spaces folded."""
    text = unicodedata.normalize("NFKC", name).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def match_keys(lead: Lead, rules: IdentityRules) -> list[tuple[MatchKey, str, str]]:
    """The (kind, value, rule) hops this lead takes, in rule order."""
    values: dict[str, str | None] = {
        "email": lead.email,
        "phone": lead.phone,
        "company": lead.company_key if lead.full_name else None,
        "domain": None,
    }
    domain = email_domain(lead.email)
    if lead.full_name and domain and domain not in rules.free_mail_domains:
        values["domain"] = domain
    return [(rule.key, value, rule.name) for rule in rules.rules if (value := values[rule.key])]


def start_probe(lead: Lead, rules: IdentityRules) -> IdentityProbe:
    return IdentityProbe(
        lead=lead, lead_id=lead.lead_id, first_seen=lead.received_at, keys=match_keys(lead, rules)
    )


def table_key(kind: str, value: str) -> str:
    return f"{kind}:{value}"


def _earlier(a: tuple[datetime, str], b: tuple[datetime, str]) -> bool:
    return a < b


def _adopt(
    probe: IdentityProbe,
    owner_id: str,
    owner_seen: datetime,
    record: MatchRecord,
) -> tuple[IdentityProbe, bool]:
    """Resolve the probe against an existing owner; True if the probe's lead survives."""
    mine = (probe.first_seen, probe.lead_id)
    theirs = (owner_seen, owner_id)
    matches = [*probe.matches, record]
    if _earlier(theirs, mine):
        absorbed = [*probe.absorbed, (probe.lead_id, record.rule)]
        return probe.model_copy(
            update={
                "lead_id": owner_id,
                "first_seen": owner_seen,
                "matches": matches,
                "absorbed": absorbed,
            }
        ), False
    absorbed = [*probe.absorbed, (owner_id, record.rule)]
    return probe.model_copy(update={"matches": matches, "absorbed": absorbed}), True


def visit_key(
    probe: IdentityProbe,
    entry: dict[str, Any] | None,
    rules: IdentityRules,
) -> tuple[IdentityProbe, dict[str, Any]]:
    """One hop: the probe's head key against that key's entry. Returns (probe, new entry)."""
    kind, value, rule_name = probe.keys[0]
    rest = probe.keys[1:]
    rule = next(r for r in rules.rules if r.name == rule_name)
    seen = probe.first_seen.isoformat()
    if kind in ("email", "phone"):
        if entry is None:
            new_entry = {"lead_id": probe.lead_id, "first_seen": seen}
            return probe.model_copy(update={"keys": rest}), new_entry
        owner_id = entry["lead_id"]
        if owner_id == probe.lead_id:
            return probe.model_copy(update={"keys": rest}), entry
        record = MatchRecord(
            rule=rule.name, key=kind, value=value, matched_lead_id=owner_id, score=100.0
        )
        resolved, mine_survives = _adopt(
            probe, owner_id, datetime.fromisoformat(entry["first_seen"]), record
        )
        if mine_survives:
            entry = {"lead_id": resolved.lead_id, "first_seen": seen}
        return resolved.model_copy(update={"keys": rest}), entry

    names: list[list[str]] = [list(n) for n in (entry or {}).get("names", [])]
    mine = name_key(probe.lead.full_name or "")
    best_index, best_score = -1, 0.0
    for index, (other_name, other_id, _) in enumerate(names):
        if other_id == probe.lead_id:
            return probe.model_copy(update={"keys": rest}), {"names": names}
        similarity = fuzz.token_sort_ratio(mine, other_name)
        if similarity > best_score:
            best_index, best_score = index, similarity
    threshold = rule.name_threshold or 100.0
    if best_index < 0 or best_score < threshold:
        names.append([mine, probe.lead_id, seen])
        return probe.model_copy(update={"keys": rest}), {"names": names[-rules.max_names_per_key :]}
    _, owner_id, owner_seen = names[best_index]
    record = MatchRecord(
        rule=rule.name, key=kind, value=value, matched_lead_id=owner_id, score=round(best_score, 1)
    )
    resolved, mine_survives = _adopt(probe, owner_id, datetime.fromisoformat(owner_seen), record)
    if mine_survives:
        names[best_index] = [names[best_index][0], resolved.lead_id, seen]
    if best_score < 100:
        # Keep the variant too, so a later spelling close to it (not to the first) matches.
        names.append([mine, resolved.lead_id, resolved.first_seen.isoformat()])
    return resolved.model_copy(update={"keys": rest}), {"names": names[-rules.max_names_per_key :]}
