-- Learned scoring (streams/learning.py): each lead's rules score beside its score, the
-- model's fit probability and version (NULL: rules alone), and the features that weigh
-- most in it; and the learner's progressive validation, one row per outcome: what the
-- model said before it learned from it, beside the rules' score. AUC and log-loss per
-- model version and per week are read from it (arrayAUC).
ALTER TABLE {db}.leads {on_cluster}
    ADD COLUMN IF NOT EXISTS rule_score Float32,
    ADD COLUMN IF NOT EXISTS fit_probability Nullable(Float32),
    ADD COLUMN IF NOT EXISTS model_version Nullable(UInt32),
    ADD COLUMN IF NOT EXISTS fit_factors Map(String, Float32);

CREATE TABLE IF NOT EXISTS {db}.scoring_evaluations {on_cluster}
(
    event_id         String,
    lead_id          String,
    version          UInt32,
    outcomes_before  UInt32,
    probability      Float64,
    rule_score       Float32,
    label            UInt8,
    at               DateTime64(3, 'UTC'),
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (event_id)
SETTINGS non_replicated_deduplication_window = 1000;
