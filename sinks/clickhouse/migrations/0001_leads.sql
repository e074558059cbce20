-- Latest state per lead. Rows of the same lead_id replace each other by version,
-- so a redelivered lead never counts twice once read with FINAL (or after merges).
CREATE TABLE IF NOT EXISTS {db}.leads {on_cluster}
(
    lead_id          String,
    version          UInt64,
    event_id         String,
    channel          LowCardinality(String),
    source_system    LowCardinality(String),
    email            String,
    phone            String,
    full_name        String,
    first_name       String,
    last_name        String,
    company          String,
    title            String,
    country          LowCardinality(String),
    message          String,
    consent          Nullable(UInt8),
    utm_source       String,
    utm_medium       String,
    utm_campaign     String,
    utm_term         String,
    utm_content      String,
    referrer         String,
    landing_page     String,
    form_id          String,
    attributes       Map(String, String),
    received_at      DateTime64(3, 'UTC'),
    normalized_at    DateTime64(3, 'UTC'),
    kafka_partition  Int32,
    kafka_offset     Int64,
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY lead_id
SETTINGS non_replicated_deduplication_window = 1000;
