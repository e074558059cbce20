-- The funnel: every stage move (the fact table), the lead's current stage and deal
-- amount on leads, the stage definitions for BI tools, and two materialized views:
-- entries per day and stage (aggregate states) and the current pipeline per lead.
ALTER TABLE {db}.leads {on_cluster}
    ADD COLUMN IF NOT EXISTS stage LowCardinality(String),
    ADD COLUMN IF NOT EXISTS stage_at Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS stage_reason String,
    ADD COLUMN IF NOT EXISTS deal_id String,
    ADD COLUMN IF NOT EXISTS amount Float64,
    ADD COLUMN IF NOT EXISTS currency LowCardinality(String);

CREATE TABLE IF NOT EXISTS {db}.lead_transitions {on_cluster}
(
    transition_id  String,
    lead_id        String,
    deal_id        String,
    from_stage     LowCardinality(String),
    to_stage       LowCardinality(String),
    event_time     DateTime64(3, 'UTC'),
    ingest_time    DateTime64(3, 'UTC'),
    owner          LowCardinality(String),
    team           LowCardinality(String),
    channel        LowCardinality(String),
    source         LowCardinality(String),
    campaign       String,
    score          Float32,
    amount         Float64,
    currency       LowCardinality(String),
    reason         String,
    inserted_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (lead_id, transition_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Written at every start from config/stages.yaml, so SQL alone can weigh amounts.
CREATE TABLE IF NOT EXISTS {db}.stage_definitions {on_cluster}
(
    stage        LowCardinality(String),
    stage_order  Int32,
    probability  Float64,
    is_closed    UInt8
)
ENGINE = ReplacingMergeTree
ORDER BY stage;

-- Leads entering each stage per day and dimension. uniqExact over lead ids: a
-- transition that lands twice still counts its lead once.
CREATE TABLE IF NOT EXISTS {db}.funnel_daily {on_cluster}
(
    day       Date,
    channel   LowCardinality(String),
    source    LowCardinality(String),
    campaign  String,
    team      LowCardinality(String),
    owner     LowCardinality(String),
    stage     LowCardinality(String),
    leads     AggregateFunction(uniqExact, String),
    amount    AggregateFunction(sum, Float64)
)
ENGINE = AggregatingMergeTree
ORDER BY (day, stage, channel, source, campaign, team, owner)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.funnel_daily_mv {on_cluster} TO {db}.funnel_daily AS
SELECT
    toDate(event_time) AS day, channel, source, campaign, team, owner, to_stage AS stage,
    uniqExactState(lead_id) AS leads, sumState(amount) AS amount
FROM {db}.lead_transitions
GROUP BY day, channel, source, campaign, team, owner, stage;

-- The latest stage of every lead (by event time, so a late event cannot roll it back).
CREATE TABLE IF NOT EXISTS {db}.pipeline_current {on_cluster}
(
    lead_id   String,
    deal_id   String,
    stage     LowCardinality(String),
    stage_at  DateTime64(3, 'UTC'),
    amount    Float64,
    currency  LowCardinality(String),
    owner     LowCardinality(String),
    team      LowCardinality(String),
    channel   LowCardinality(String),
    source    LowCardinality(String),
    campaign  String,
    version   UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY lead_id
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.pipeline_current_mv {on_cluster} TO {db}.pipeline_current AS
SELECT
    lead_id, deal_id, to_stage AS stage, event_time AS stage_at, amount, currency, owner, team,
    channel, source, campaign, toUInt64(toUnixTimestamp64Milli(event_time)) AS version
FROM {db}.lead_transitions;
