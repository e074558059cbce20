"""Who is the same person, worked out without the stream: the reference the tests and
`leadflow bench pipeline` check the stream core's answer against.

It knows nothing of partitions, hops or merges. Two leads are one person when
an exact key is equal (email; phone with its extension), or when a fuzzy rule
finds their names similar (rapidfuzz token-sort ratio at least the rule's
threshold, at the same company key or the same corporate email domain, and a
word of each starting with the same two characters) and their exact
identifiers do not disagree; people are the connected
components. The survivor is the lead that entered leadflow first
(`received_at`), then the smaller lead id; never an event's own time.

Pairs are compared only inside blocks that share a key, so a bench of
thousands of leads is checked in seconds, not in a quadratic sweep.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from rapidfuzz import fuzz

from leadflow.normalize import normalize_lead, phone_match_key
from leadflow.rules import Rules
from schemas import Lead, RawLead
from streams.identity import name_blocks, name_key
from streams.scoring import email_domain


def disagree(a: Lead, b: Lead) -> bool:
    """Exact identifiers that say two people: both emails and different, or both phones
    and different numbers (or one number's two different extensions)."""
    if a.email and b.email and a.email != b.email:
        return True
    if a.phone and b.phone:
        if a.phone != b.phone:
            return True
        return bool(a.phone_extension and b.phone_extension) and (
            a.phone_extension != b.phone_extension
        )
    return False


def expected_survivors(
    envelopes: Iterable[RawLead], rules: Rules, default_region: str = "CN"
) -> dict[str, set[str]]:
    """Each person's surviving lead id, with the person's event ids."""
    leads = [normalize_lead(e, default_region=default_region) for e in envelopes]
    parent = list(range(len(leads)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        parent[find(a)] = find(b)

    exact: dict[str, list[int]] = defaultdict(list)
    fuzzy: dict[tuple[str, str], list[int]] = defaultdict(list)
    thresholds: dict[str, float | None] = {r.key: r.name_threshold for r in rules.identity.rules}
    for i, lead in enumerate(leads):
        if lead.email:
            exact[f"email:{lead.email}"].append(i)
        if lead.phone:
            exact[f"phone:{phone_match_key(lead.phone, lead.phone_extension)}"].append(i)
        if not lead.full_name:
            continue
        if lead.company_key and thresholds.get("company"):
            fuzzy[("company", lead.company_key)].append(i)
        domain = email_domain(lead.email)
        if domain and domain not in rules.identity.free_mail_domains and thresholds.get("domain"):
            fuzzy[("domain", domain)].append(i)
    for members in exact.values():
        for other in members[1:]:
            union(members[0], other)
    names = {i: name_key(lead.full_name or "") for i, lead in enumerate(leads)}
    # Names are compared where they share a block (streams.identity.name_blocks).
    blocked: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for (kind, value), members in fuzzy.items():
        for i in members:
            for block in name_blocks(names[i]):
                blocked[(kind, value, block)].append(i)
    for (kind, _, _), members in blocked.items():
        threshold = thresholds[kind] or 101.0
        for n, i in enumerate(members):
            for j in members[:n]:
                a, b = leads[i], leads[j]
                if disagree(a, b) or find(i) == find(j):
                    continue
                if fuzz.token_sort_ratio(names[i], names[j]) >= threshold:
                    union(i, j)
    groups: dict[int, list[Lead]] = defaultdict(list)
    for i, lead in enumerate(leads):
        groups[find(i)].append(lead)
    return {
        min(group, key=lambda x: (x.received_at, x.lead_id)).lead_id: {x.event_id for x in group}
        for group in groups.values()
    }


def expected_people(
    envelopes: Iterable[RawLead], rules: Rules, default_region: str = "CN"
) -> list[set[str]]:
    """Groups of event ids that the matching rules say are one person."""
    return [set(g) for g in expected_survivors(envelopes, rules, default_region).values()]


def differences(
    expected: dict[str, set[str]], found: dict[str, set[str]], shown: int = 10
) -> list[str]:
    """What the stream did differently from the oracle, person by person (at most `shown`).

    Both maps go from a surviving lead id to the event ids of that person; the
    comparison is on the groups of event ids, then on which lead id survived.
    """
    want = {frozenset(events): lead for lead, events in expected.items()}
    got = {frozenset(events): lead for lead, events in found.items()}
    problems: list[str] = []
    for events, lead in sorted(want.items(), key=lambda kv: kv[1]):
        if events not in got:
            problems.append(f"expected one person of events {sorted(events)} (lead {lead})")
        elif got[events] != lead:
            problems.append(f"events {sorted(events)}: lead {got[events]} survived, not {lead}")
    for events, lead in sorted(got.items(), key=lambda kv: kv[1]):
        if events not in want:
            problems.append(f"lead {lead} holds events {sorted(events)}, no person of the oracle")
    return problems[:shown] + ([f"… {len(problems) - shown} more"] if len(problems) > shown else [])
