-- When the owner accepted the lead; empty while the team's SLA clock still runs.
ALTER TABLE {db}.leads {on_cluster}
    ADD COLUMN IF NOT EXISTS accepted_at Nullable(DateTime64(3, 'UTC'));
