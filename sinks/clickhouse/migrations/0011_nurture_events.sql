-- Everything that happened in a follow-up sequence, from `nurture.events`: a lead
-- enrolled, an email sent, bounced, opened, clicked, replied to, an unsubscribe, a
-- sequence left (and why), a call task created for its owner and done (with the call's
-- outcome). One row per happening: its id is derived, so a replay writes nothing new.
-- No contact data: the lead's row in `leads` has it.
CREATE TABLE IF NOT EXISTS {db}.nurture_events {on_cluster}
(
    event_id     String,
    lead_id      String,
    sequence     LowCardinality(String),
    step         LowCardinality(String),
    kind         LowCardinality(String),
    at           DateTime64(3, 'UTC'),
    owner        String,
    due_at       Nullable(DateTime64(3, 'UTC')),
    send_id      String,
    detail       String,
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (lead_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;
