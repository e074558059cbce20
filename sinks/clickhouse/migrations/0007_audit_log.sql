-- Who erased whom and who read personal data: one row per erasure (or dry run) and per
-- read of a `read:pii` route. No raw identifier is stored: emails, phones and lead ids
-- appear only as the salted hashes the suppression list uses (leadflow/privacy.py), so
-- the log outlives an erasure without keeping the person.
CREATE TABLE IF NOT EXISTS {db}.audit_log {on_cluster}
(
    audit_id     String,
    at           DateTime64(3, 'UTC'),
    key_id       String,
    key_name     String,
    action       LowCardinality(String),
    route        String,
    target       String,
    lead_hashes  Array(String),
    rows         UInt64,
    detail       String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (at, audit_id);
