-- Every dead letter of every stage, for operators and BI: what was refused, where, and why.
-- The original bytes stay base64 so that a replay can resend them exactly.
CREATE TABLE IF NOT EXISTS {db}.dead_letters {on_cluster}
(
    dead_letter_id    String,
    stage             LowCardinality(String),
    reason            LowCardinality(String),
    error_class       LowCardinality(String),
    message           String,
    problems          Map(String, String),
    original_b64      String,
    original_key      String,
    source_topic      String,
    source_partition  Int32,
    source_offset     Int64,
    source_detail     String,
    failed_at         DateTime64(3, 'UTC'),
    inserted_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (stage, dead_letter_id)
SETTINGS non_replicated_deduplication_window = 1000;
