-- Every routing decision as `leads.assigned` carries it: which lead went to which team
-- and owner, by which rule, when, and at what score. A lead's first assignment is a row
-- here one Kafka hop after routing decided it; `leads.owner` follows once the lead stage
-- has taken it in. No contact data: the lead's row in `leads` has it.
CREATE TABLE IF NOT EXISTS {db}.assignments {on_cluster}
(
    assignment_id  String,
    lead_id        String,
    team           LowCardinality(String),
    owner          String,
    owner_name     String,
    rule           LowCardinality(String),
    reason         String,
    assigned_at    DateTime64(3, 'UTC'),
    score          Float32,
    grade          LowCardinality(String),
    source         LowCardinality(String),
    inserted_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (lead_id, assignment_id)
SETTINGS non_replicated_deduplication_window = 1000;
