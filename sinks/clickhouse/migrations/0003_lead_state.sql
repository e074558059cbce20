-- leads now holds the whole person as the stream core knows it: merged profile,
-- every touch, score and owner. Columns that described one form post move into
-- the touches; a merged lead keeps a row with merged_into set to its survivor.
ALTER TABLE {db}.leads {on_cluster}
    DROP COLUMN IF EXISTS message,
    DROP COLUMN IF EXISTS utm_source,
    DROP COLUMN IF EXISTS utm_medium,
    DROP COLUMN IF EXISTS utm_campaign,
    DROP COLUMN IF EXISTS utm_term,
    DROP COLUMN IF EXISTS utm_content,
    DROP COLUMN IF EXISTS referrer,
    DROP COLUMN IF EXISTS landing_page,
    DROP COLUMN IF EXISTS form_id,
    DROP COLUMN IF EXISTS normalized_at,
    DROP COLUMN IF EXISTS received_at;

ALTER TABLE {db}.leads {on_cluster}
    ADD COLUMN IF NOT EXISTS first_seen DateTime64(3, 'UTC'),
    ADD COLUMN IF NOT EXISTS updated_at DateTime64(3, 'UTC'),
    ADD COLUMN IF NOT EXISTS merged_into String,
    ADD COLUMN IF NOT EXISTS merged_from Array(String),
    ADD COLUMN IF NOT EXISTS emails Array(String),
    ADD COLUMN IF NOT EXISTS phones Array(String),
    ADD COLUMN IF NOT EXISTS company_key String,
    ADD COLUMN IF NOT EXISTS company_size Nullable(UInt32),
    ADD COLUMN IF NOT EXISTS industry String,
    ADD COLUMN IF NOT EXISTS first_touch_channel LowCardinality(String),
    ADD COLUMN IF NOT EXISTS first_touch_source LowCardinality(String),
    ADD COLUMN IF NOT EXISTS first_touch_medium LowCardinality(String),
    ADD COLUMN IF NOT EXISTS first_touch_campaign String,
    ADD COLUMN IF NOT EXISTS last_touch_channel LowCardinality(String),
    ADD COLUMN IF NOT EXISTS last_touch_source LowCardinality(String),
    ADD COLUMN IF NOT EXISTS last_touch_medium LowCardinality(String),
    ADD COLUMN IF NOT EXISTS last_touch_campaign String,
    ADD COLUMN IF NOT EXISTS touch_count UInt32,
    ADD COLUMN IF NOT EXISTS touch_event_ids Array(String),
    ADD COLUMN IF NOT EXISTS touch_channels Array(String),
    ADD COLUMN IF NOT EXISTS touch_sources Array(String),
    ADD COLUMN IF NOT EXISTS touch_at Array(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS score Float32,
    ADD COLUMN IF NOT EXISTS grade LowCardinality(String),
    ADD COLUMN IF NOT EXISTS score_rules Map(String, Float32),
    ADD COLUMN IF NOT EXISTS mql_at Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS team LowCardinality(String),
    ADD COLUMN IF NOT EXISTS owner LowCardinality(String),
    ADD COLUMN IF NOT EXISTS owner_name String,
    ADD COLUMN IF NOT EXISTS assignment_rule LowCardinality(String),
    ADD COLUMN IF NOT EXISTS assignment_reason String,
    ADD COLUMN IF NOT EXISTS assigned_at Nullable(DateTime64(3, 'UTC'));

-- Why two leads became one: the rule that fired and its score. Undoing a merge
-- starts from here.
CREATE TABLE IF NOT EXISTS {db}.lead_merges {on_cluster}
(
    merge_id     String,
    survivor_id  String,
    merged_id    String,
    rule         LowCardinality(String),
    score        Float32,
    event_id     String,
    merged_at    DateTime64(3, 'UTC'),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (survivor_id, merge_id)
SETTINGS non_replicated_deduplication_window = 1000;
