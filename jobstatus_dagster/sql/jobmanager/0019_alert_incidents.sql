-- Alerts (issue 20): one row per incident, so one alert when it starts and one when it clears,
-- however many failed runs, failing check evaluations or sensor looks it spans. Ours alone, never
-- read by the shop; additive and idempotent (R1).
CREATE TABLE IF NOT EXISTS alert_incidents (
    incident_id      BIGSERIAL PRIMARY KEY,
    -- What is wrong, one open incident per subject: 'run:print_os', 'run:deliver_webhooks',
    -- 'check:logs/imposition_file_mapping:file_ids_match_the_pattern', 'marker_lag:scanner',
    -- 'failure_age:print_os'.
    subject          TEXT NOT NULL,
    summary          TEXT NOT NULL,           -- the first sign, as the alert says it
    detail           JSONB NOT NULL DEFAULT '{}'::jsonb,
    started_at       TIMESTAMPTZ NOT NULL,
    last_failed_at   TIMESTAMPTZ NOT NULL,    -- the latest sign (a run clears only if asked after)
    failures         INTEGER NOT NULL DEFAULT 1,
    cleared_at       TIMESTAMPTZ,
    cleared_by       TEXT,                    -- what showed it over (a run id, a passing check)
    opened_sent_at   TIMESTAMPTZ,             -- when the opening alert went out
    cleared_sent_at  TIMESTAMPTZ              -- when the clearing alert went out
);
CREATE UNIQUE INDEX IF NOT EXISTS alert_incidents_one_open_per_subject
    ON alert_incidents (subject) WHERE cleared_at IS NULL;
-- What the alert sensor still has to send: a handful of rows, read every tick.
CREATE INDEX IF NOT EXISTS alert_incidents_unsent
    ON alert_incidents (incident_id)
    WHERE opened_sent_at IS NULL OR (cleared_at IS NOT NULL AND cleared_sent_at IS NULL);
