"""Stage `identity` (pure part): is this lead someone we already know?

The identity index is partitioned by match key (`email:…`, `phone:…`,
`company:…`, `domain:…`). A new lead visits all its keys at once: `scatter`
gives one probe per key on `identity.keys`, each owned by exactly one
partition, and each comes back to the lead step resolved against its key;
`combine` makes one answer of them there. So a lead takes two Kafka hops to
be resolved whatever the number of its keys. `visit_key` is one key's visit.
It never reads state of another key:

- an exact key (email, phone with its extension: `+498912340;ext=12`) maps to
  the lead that first claimed it;
- a fuzzy key (company, email domain) holds the names seen under it, each with
  the email and phone key of the lead that brought it, filed by block (the first
  two characters of each word, `name_blocks`). A name that shares a block and is
  at least `name_threshold` similar (rapidfuzz token-sort ratio) matches, unless the
  two leads' exact identifiers disagree (both have an email and they differ,
  or both have a phone and the numbers, or both extensions, differ): then the
  pair is only a *suggested* duplicate (`probe.suggested`), never a merge.
  Every similar, agreeing name is a match, so the result is the union of all
  such pairs whatever the order of arrival.

When the hop finds another lead, the one that entered leadflow first survives
(`first_seen`: the arrival of its first lead, or when the events step took the
call or engagement that started it; never an event's occurred_at), then the
smaller id; the other is recorded in `absorbed`, and the lead step (keyed by
lead id) merges it. Keys keep pointing at whichever lead claimed them; the
lead step redirects a merged id to its survivor.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Any, Protocol

from rapidfuzz import fuzz, process

from leadflow.ids import table_key
from leadflow.normalize import phone_match_key
from leadflow.rules import IdentityRules
from schemas import IdentityProbe, Lead, MatchRecord
from schemas.lead_state import MAX_SUGGESTIONS, MatchKey
from streams.scoring import email_domain


def name_key(name: str) -> str:
    """A name for fuzzy comparison: NFKC, case-folded, punctuation gone, spaces folded."""
    text = unicodedata.normalize("NFKC", name).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def match_keys(lead: Lead, rules: IdentityRules) -> list[tuple[MatchKey, str, str]]:
    """The (kind, value, rule) hops this lead takes, in rule order."""
    values: dict[str, str | None] = {
        "email": lead.email,
        "phone": phone_match_key(lead.phone, lead.phone_extension),
        "company": lead.company_key if lead.full_name else None,
        "domain": None,
    }
    domain = email_domain(lead.email)
    if lead.full_name and domain and domain not in rules.free_mail_domains:
        values["domain"] = domain
    return [(rule.key, value, rule.name) for rule in rules.rules if (value := values[rule.key])]


def start_probe(
    lead: Lead, rules: IdentityRules, entered_at: datetime | None = None
) -> IdentityProbe:
    """The probe of a new lead; it ranks by `entered_at` (default: the lead's arrival)."""
    return IdentityProbe(
        lead=lead,
        lead_id=lead.lead_id,
        first_seen=entered_at or lead.received_at,
        keys=match_keys(lead, rules),
    )


def identifiers_disagree(
    email_a: str | None, phone_a: str | None, email_b: str | None, phone_b: str | None
) -> bool:
    """True when two leads' exact identifiers say they are different people.

    Phones are match keys (`+498912340;ext=12`): different numbers disagree, and so
    do one number's two different extensions; a number with and without extension
    does not disagree (nor does it match exactly)."""
    if email_a and email_b and email_a != email_b:
        return True
    if phone_a and phone_b and phone_a != phone_b:
        number_a, _, ext_a = phone_a.partition(";ext=")
        number_b, _, ext_b = phone_b.partition(";ext=")
        return number_a != number_b or bool(ext_a and ext_b)
    return False


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
    if theirs < mine:
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


def _suggest(probe: IdentityProbe, records: list[MatchRecord]) -> IdentityProbe:
    if not records:
        return probe
    merged = {r.matched_lead_id: r for r in (*probe.suggested, *records)}
    best = sorted(merged.values(), key=lambda r: (-r.score, r.matched_lead_id))
    return probe.model_copy(update={"suggested": best[:MAX_SUGGESTIONS]})


MAX_NAME_BLOCKS = 6  # blocks of a name's six longest words: a name of hundreds of words
# would otherwise be filed (and rewritten) hundreds of times


def name_blocks(name: str) -> list[str]:
    """The blocks a name is filed under at a fuzzy key: the first two characters of each
    of its words (`anna schmidt`: `an`, `sc`), of its six longest words at most. Two names
    are compared only when they share a block, so a key's names are split into small
    entries instead of one list of all; similar names almost always share one (a typo
    changes one word, rarely its start)."""
    words = sorted(set(name.split()), key=lambda word: (-len(word), word))
    return sorted({word[:2] for word in words[:MAX_NAME_BLOCKS]})


def block_key(key: str, block: str) -> str:
    """The entry of one block of a fuzzy key (`company:fabrikam|sc`); company keys and
    domains never hold `|`, names' blocks are word characters."""
    return f"{key}|{block}"


def visit_key(
    probe: IdentityProbe,
    entry: dict[str, Any] | None,
    rules: IdentityRules,
) -> tuple[IdentityProbe, dict[str, Any]]:
    """One hop at an exact key: the probe against that key's entry. Returns (probe, new
    entry). Fuzzy keys keep their names in several entries: `visit_names`."""
    kind, value, rule_name = probe.keys[0]
    assert kind in ("email", "phone"), kind
    rest = probe.keys[1:]
    rule = next(r for r in rules.rules if r.name == rule_name)
    seen = probe.first_seen.isoformat()
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


class Index(Protocol):
    """What a visit reads: the stage's table (a dict in tests)."""

    def get(self, key: str, default: Any = None) -> Any: ...


Row = list[Any]  # [name, lead id, first seen, email, phone key]; older rows lack the last two


def _row_blocks(row: Row) -> list[str]:
    return name_blocks(row[0])


def _unfiled(key: str, index: Index, writes: dict[str, Any]) -> dict[str, Any]:
    """The key's directory of blocks, filing an older single list of names by block first
    (`writes` gets the block entries; the directory is the caller's to write)."""
    directory = writes.get(key, index.get(key)) or {}
    if "names" not in directory:
        return {"blocks": list(directory.get("blocks", []))}
    blocks: set[str] = set()
    for row in directory["names"]:
        for block in _row_blocks(row):
            bkey = block_key(key, block)
            entry = writes.get(bkey, index.get(bkey)) or {"names": []}
            writes[bkey] = {"names": [*entry["names"], list(row)]}
            blocks.add(block)
    return {"blocks": sorted(blocks)}


def visit_names(
    probe: IdentityProbe,
    index: Index,
    rules: IdentityRules,
) -> tuple[IdentityProbe, dict[str, Any]]:
    """One hop at a fuzzy key (company, domain): the probe's name against the names filed
    under the blocks it shares with them. Returns (probe, writes: table key → new value).

    The key's own entry lists its blocks (`{"blocks": […]}`, for erasure); each block
    entry `key|block` lists the rows of the names filed there, the newest
    `max_names_per_key` of them. A name is filed under each of its blocks, so a row that
    changes (it now points at the survivor) changes in each."""
    kind, value, rule_name = probe.keys[0]
    rest = probe.keys[1:]
    rule = next(r for r in rules.rules if r.name == rule_name)
    key = table_key(kind, value)
    mine = name_key(probe.lead.full_name or "")
    my_blocks = name_blocks(mine)
    if not my_blocks:  # a name of punctuation only: nothing to compare
        return probe.model_copy(update={"keys": rest}), {}
    writes: dict[str, Any] = {}
    directory = _unfiled(key, index, writes)

    def block_rows(block: str) -> list[Row]:
        bkey = block_key(key, block)
        return list((writes.get(bkey, index.get(bkey)) or {}).get("names", []))

    # Every row of my blocks once, in block order then stored order.
    candidates: list[Row] = []
    known: set[tuple[Any, ...]] = set()
    for block in my_blocks:
        for row in block_rows(block):
            if (ident := tuple(row[:5])) not in known:
                known.add(ident)
                candidates.append(row)
    my_email = probe.lead.email
    my_phone = phone_match_key(probe.lead.phone, probe.lead.phone_extension)
    threshold = rule.name_threshold or 100.0
    resolved = probe
    adopted: list[Row] = []
    suggestions: list[MatchRecord] = []
    duplicate = False
    # Only the similar names, compared in rapidfuzz's own loop, then taken in stored order.
    similar = process.extract(
        mine,
        [row[0] for row in candidates],
        scorer=fuzz.token_sort_ratio,
        score_cutoff=threshold,
        limit=None,
    )
    for _, similarity, position in sorted(similar, key=lambda found: found[2]):
        row = candidates[position]
        other_name, other_id, other_seen = row[0], row[1], row[2]
        other_email, other_phone = (row[3], row[4]) if len(row) >= 5 else (None, None)
        score = round(similarity, 1)
        if identifiers_disagree(my_email, my_phone, other_email, other_phone):
            suggestions.append(
                MatchRecord(
                    rule=rule.name, key=kind, value=value, matched_lead_id=other_id, score=score
                )
            )
            continue
        if len(row) >= 5 and (other_name, other_email, other_phone) == (mine, my_email, my_phone):
            duplicate = True  # this very name and identifiers are here already
        if other_id == resolved.lead_id:
            continue
        record = MatchRecord(
            rule=rule.name, key=kind, value=value, matched_lead_id=other_id, score=score
        )
        resolved, _ = _adopt(resolved, other_id, datetime.fromisoformat(other_seen), record)
        adopted.append(row)
    # Every name this person went by points at the survivor: the earliest of them all,
    # in every block the name is filed under.
    resolved_seen = resolved.first_seen.isoformat()
    changed = {tuple(row[:5]) for row in adopted}
    touched = {block for row in adopted for block in _row_blocks(row)}
    if not duplicate:
        touched |= set(my_blocks)
    for block in sorted(touched):
        rows = [
            [row[0], resolved.lead_id, resolved_seen, *row[3:]]
            if tuple(row[:5]) in changed
            else row
            for row in block_rows(block)
        ]
        if not duplicate and block in my_blocks:
            rows.append([mine, resolved.lead_id, resolved_seen, my_email, my_phone])
        writes[block_key(key, block)] = {"names": rows[-rules.max_names_per_key :]}
    blocks = sorted(set(directory["blocks"]) | set(my_blocks))
    if index.get(key) != {"blocks": blocks}:
        writes[key] = {"blocks": blocks}
    suggested = {r.matched_lead_id for r in suggestions} - {resolved.lead_id}
    resolved = _suggest(resolved, [r for r in suggestions if r.matched_lead_id in suggested])
    return resolved.model_copy(update={"keys": rest}), writes


def visit(
    probe: IdentityProbe, index: Index, rules: IdentityRules
) -> tuple[IdentityProbe, dict[str, Any]]:
    """The probe's head key, whichever its kind. Returns (probe, writes: table key → new
    value); the caller writes only what changed."""
    kind, value, _ = probe.keys[0]
    if kind in ("email", "phone"):
        key = table_key(kind, value)
        entry = index.get(key)
        resolved, new_entry = visit_key(probe, entry, rules)
        return resolved, ({} if new_entry == entry else {key: new_entry})
    return visit_names(probe, index, rules)


def scatter(probe: IdentityProbe) -> list[tuple[str, bytes]]:
    """(match key, message) for each of the probe's keys, all sent at once.

    A lead with a single key sends the probe as it is: its answer goes straight
    to the lead it resolves to. With several, each probe carries one key and
    says which part it is, and the answers are gathered under the lead's own id;
    part 0 carries the whole lead, the others only what their key is compared on."""
    if len(probe.keys) <= 1:
        return [(table_key(*probe.keys[0][:2]), probe.model_dump_json().encode())]
    parts = len(probe.keys)
    # Only part 0 carries the whole lead (the lead step keeps that one); the others
    # carry what a key is compared on.
    slim = identity_view(probe.lead)
    return [
        (
            table_key(kind, value),
            probe.model_copy(
                update={
                    "keys": [(kind, value, rule)],
                    "part": part,
                    "parts": parts,
                    **({} if part == 0 else {"lead": slim, "engagements": []}),
                }
            )
            .model_dump_json()
            .encode(),
        )
        for part, (kind, value, rule) in enumerate(probe.keys)
    ]


_IDENTITY_FIELDS = (
    "lead_id",
    "event_id",
    "channel",
    "source_system",
    "email",
    "phone",
    "phone_extension",
    "full_name",
    "received_at",
    "normalized_at",
)


# Every other field at its default (a copy, not a validation: this runs per key).
_LEFT_OUT = {
    name: field.get_default(call_default_factory=True)
    for name, field in Lead.model_fields.items()
    if name not in _IDENTITY_FIELDS and not field.is_required()
}


def identity_view(lead: Lead) -> Lead:
    """The lead as a key's visit needs it: ids, contact and name (`visit_key`)."""
    return lead.model_copy(update=_LEFT_OUT)


def combine(answers: list[IdentityProbe]) -> IdentityProbe:
    """One lead's probes, each resolved against its own key, as one resolved probe.

    The survivor is the earliest (`first_seen`, then id) lead any key resolved to;
    every other lead a key resolved to, and every lead a key absorbed, is absorbed
    by it. The same people come out as when the keys are visited one after the
    other: each key links the lead to the leads found under it, and the lead step
    merges what the links join."""
    answers = sorted(answers, key=lambda probe: probe.part)
    best = min(answers, key=lambda probe: (probe.first_seen, probe.lead_id))
    survivor = best.lead_id
    found = {m.matched_lead_id: m for probe in answers for m in probe.matches}
    absorbed: dict[str, str] = {}
    for probe in answers:
        for lead_id, rule in probe.absorbed:
            absorbed.setdefault(lead_id, rule)
        if probe.lead_id in found:
            absorbed.setdefault(probe.lead_id, found[probe.lead_id].rule)
    absorbed.pop(survivor, None)
    # The survivor's own match first: it names the rule of the lead's merge row.
    matches = sorted(found.values(), key=lambda m: m.matched_lead_id != survivor)
    joined = set(absorbed) | {survivor}
    suggested = [
        record
        for probe in answers
        for record in probe.suggested
        if record.matched_lead_id not in joined
    ]
    resolved = answers[0].model_copy(
        update={
            "lead_id": survivor,
            "first_seen": best.first_seen,
            "keys": [],
            "matches": matches,
            "absorbed": list(absorbed.items()),
            "suggested": [],
            "part": 0,
            "parts": 1,
        }
    )
    return _suggest(resolved, suggested)
