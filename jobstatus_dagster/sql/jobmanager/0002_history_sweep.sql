-- R19: where the sweep of the processed history for rows never processed has got to,
-- as (marker, source id) in marker order; NULL: start again from the lowest marker.
ALTER TABLE processing_markers ADD COLUMN IF NOT EXISTS sweep_marker BIGINT;
ALTER TABLE processing_markers ADD COLUMN IF NOT EXISTS sweep_source_id BIGINT;
