-- An undone merge keeps its row, with the time it was undone: the newest row of a
-- merge_id wins (ReplacingMergeTree, read with FINAL), so current merges are those
-- with unmerged_at empty.
ALTER TABLE {db}.lead_merges {on_cluster}
    ADD COLUMN IF NOT EXISTS unmerged_at Nullable(DateTime64(3, 'UTC'));
