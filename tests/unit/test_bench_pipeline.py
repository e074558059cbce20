"""The pure helpers of `leadflow bench pipeline`."""

from __future__ import annotations

import os
from pathlib import Path

from leadflow_tools.bench_pipeline import _folder_bytes, _vm_kib, percentile


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 0.0) == 1.0


def test_peak_memory_of_a_running_process_and_of_a_gone_one() -> None:
    assert _vm_kib(os.getpid(), "VmHWM") > 1000
    assert _vm_kib(2**22 + 12345, "VmHWM") == 0


def test_folder_bytes_counts_every_file(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5)
    assert _folder_bytes(tmp_path) == 15


def test_the_oracle_names_every_way_the_stream_can_differ() -> None:
    from leadflow_tools.oracle import differences

    expected = {"a": {"e1", "e2"}, "c": {"e3"}, "d": {"e4"}}
    assert differences(expected, {"a": {"e1", "e2"}, "c": {"e3"}, "d": {"e4"}}) == []
    found = {"b": {"e1", "e2"}, "c": {"e3", "e4"}}
    problems = differences(expected, found)
    assert "events ['e1', 'e2']: lead b survived, not a" in problems
    assert "expected one person of events ['e3'] (lead c)" in problems
    assert "lead c holds events ['e3', 'e4'], no person of the oracle" in problems
    assert len(differences(expected, {}, shown=1)) == 2  # one shown, then "… 2 more"


def test_the_blocked_oracle_agrees_with_every_pair_compared() -> None:
    """The oracle compares only leads that share a key; on a real sample that gives the
    same people as comparing every pair, as the rules define them."""
    from rapidfuzz import fuzz

    from leadflow.normalize import normalize_lead, phone_match_key
    from leadflow.rules import load_rules
    from leadflow_tools.oracle import disagree, expected_people
    from leadflow_tools.samples.generate import generate
    from streams.identity import name_key
    from streams.scoring import email_domain

    rules = load_rules()
    envelopes = generate(300, duplicate_share=0.3, seed=5).envelopes
    leads = [normalize_lead(e, default_region="CN") for e in envelopes]
    thresholds = {r.key: r.name_threshold for r in rules.identity.rules}
    parent = list(range(len(leads)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, a in enumerate(leads):
        for j, b in enumerate(leads[:i]):
            same = bool(a.email and a.email == b.email) or bool(
                a.phone
                and phone_match_key(a.phone, a.phone_extension)
                == phone_match_key(b.phone, b.phone_extension)
            )
            if not same and a.full_name and b.full_name and not disagree(a, b):
                ratio = fuzz.token_sort_ratio(name_key(a.full_name), name_key(b.full_name))
                if a.company_key and a.company_key == b.company_key:
                    same = ratio >= (thresholds.get("company") or 101)
                domain = email_domain(a.email)
                corporate = domain and domain not in rules.identity.free_mail_domains
                if not same and corporate and domain == email_domain(b.email):
                    same = ratio >= (thresholds.get("domain") or 101)
            if same:
                parent[find(i)] = find(j)
    groups: dict[int, set[str]] = {}
    for i, lead in enumerate(leads):
        groups.setdefault(find(i), set()).add(lead.event_id)
    pairwise = sorted(sorted(g) for g in groups.values())
    assert pairwise == sorted(sorted(g) for g in expected_people(envelopes, rules))
    assert len(pairwise) < len(leads)  # the sample does hold people who came back


def test_the_benches_rule_files_load_as_a_worker_loads_them(tmp_path: Path) -> None:
    from datetime import timedelta

    from leadflow.rules import load_rules
    from leadflow_tools.bench_nurture import bench_rules
    from leadflow_tools.bench_pipeline import learning_rules

    assert load_rules(learning_rules(tmp_path / "on", learned=True)).scoring.model.enabled
    off = load_rules(learning_rules(tmp_path / "off", learned=False))
    assert not off.scoring.model.enabled
    assert off.scoring.mql_threshold == load_rules().scoring.mql_threshold  # the rest kept
    nurture = load_rules(bench_rules(tmp_path / "nurture", timedelta(seconds=20))).nurture
    held, probe = nurture.sequences["held"], nurture.sequences["bench"]
    assert held.trigger.new_lead is not None
    assert held.trigger.new_lead.sources == ["held"]
    assert probe.trigger.new_lead is not None
    assert probe.trigger.new_lead.sources == ["bench"]
    assert len(held.steps) == len(probe.steps) == 5
