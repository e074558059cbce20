"""Stage `tag_source` (pure): which channel, source, medium and campaign a lead came through.

Order of evidence: UTM tags the sender set; a click id (gclid, bd_vid …);
the referrer's host, classified by config/sources.yaml; the channel's own
default (a trade show's event name, the call center). Otherwise `direct`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from leadflow.rules import SourceRules
from schemas import Lead, Touch


def _lower(value: str | None) -> str:
    return (value or "").strip().lower()


def referrer_source(referrer: str | None, rules: SourceRules) -> tuple[str, str] | None:
    """(source, medium) of a referrer URL by its host's longest known suffix."""
    if not referrer:
        return None
    host = urlsplit(referrer if "//" in referrer else f"//{referrer}").hostname or ""
    best: tuple[str, str] | None = None
    best_len = -1
    for suffix, tagged in rules.referrers.items():
        if (host == suffix or host.endswith("." + suffix)) and len(suffix) > best_len:
            best, best_len = tagged, len(suffix)
    return best


def tag_source(lead: Lead, rules: SourceRules) -> Touch:
    """The touch this lead's event represents."""
    source = medium = ""
    campaign = _lower(lead.utm_campaign)
    if lead.utm_source:
        source, medium = _lower(lead.utm_source), _lower(lead.utm_medium)
    else:
        for click_id, tagged in rules.click_ids.items():
            if lead.attributes.get(click_id):
                source, medium = tagged
                break
        else:
            from_referrer = referrer_source(lead.referrer, rules)
            if from_referrer:
                source, medium = from_referrer
            elif lead.channel in rules.channel_defaults:
                source, medium = rules.channel_defaults[lead.channel]
                event_name = lead.attributes.get("event") or lead.form_id
                if lead.channel == "tradeshow" and event_name:
                    source = _lower(event_name)
            elif lead.channel == "social":
                source, medium = _lower(lead.source_system) or "social", "paid_social"
            else:
                source, medium = "direct", "none"
    return Touch(
        event_id=lead.event_id,
        channel=lead.channel,
        source=source or "unknown",
        medium=medium or "unknown",
        campaign=campaign,
        source_system=lead.source_system,
        at=lead.touched_at,
    )
