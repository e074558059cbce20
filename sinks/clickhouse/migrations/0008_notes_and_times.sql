-- What a sender wrote about the person (a form's message, a badge's note, call notes),
-- oldest first, as parallel arrays like the touches; and what was left out or defaulted
-- on the way in (a refused scan time, a dropped cell), with why. Extensions of the phone
-- and the suggested duplicates complete the identity picture.
ALTER TABLE {db}.leads {on_cluster}
    ADD COLUMN IF NOT EXISTS note_texts Array(String),
    ADD COLUMN IF NOT EXISTS note_sources Array(String),
    ADD COLUMN IF NOT EXISTS note_at Array(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS warnings Array(String),
    ADD COLUMN IF NOT EXISTS phone_extension String,
    ADD COLUMN IF NOT EXISTS suggested_lead_ids Array(String),
    ADD COLUMN IF NOT EXISTS suggested_rules Array(String),
    ADD COLUMN IF NOT EXISTS suggested_scores Array(Float32);
