-- R25: an ordered change stream. The feed and the webhooks carried audit rows, which a write
-- updates in place (a late event completes an earlier source's attribution) and inserts in
-- plan order, so a reader folding them could keep a state the tables no longer hold. Now each
-- write records, per (job, version, operation) it projected, the state it reached when that
-- differs from the last one recorded: a new change, never updated. Additive and idempotent (R1).

-- The last state recorded per key: what a reader folding the stream holds (io/writer.py
-- _publish_changes compares against it). Keys are the projection's, so no longer than
-- core/identifiers.guard_plan_keys allows: a btree holds them.
CREATE TABLE IF NOT EXISTS job_version_state (
    job_id        TEXT NOT NULL,
    version_tag   TEXT NOT NULL,
    operation     TEXT NOT NULL,
    status        TEXT NOT NULL,
    printed_count INTEGER,
    aborted_count INTEGER,
    total_count   INTEGER,
    notes         TEXT,
    event_time    TIMESTAMP,
    source_type   VARCHAR,
    source_id     BIGINT,
    change_id     BIGINT NOT NULL,
    updated_at    TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, version_tag, operation)
);

-- The stream. change_id is drawn by the writer under the writers' lock as the last id plus
-- one (gap-free, and in commit order: no lower id becomes visible later). On an install that
-- had the audit-row feed, the first change follows the last audit update_id, so a reader's
-- saved position still finds every change.
CREATE TABLE IF NOT EXISTS job_status_changes (
    change_id          BIGINT PRIMARY KEY,
    job_id             TEXT NOT NULL,
    version_tag        TEXT NOT NULL,
    operation          TEXT NOT NULL,
    event              TEXT NOT NULL,  -- 'status' | 'withdrawn' (the key holds no state now)
    status             TEXT,
    printed_count      INTEGER,
    aborted_count      INTEGER,
    total_count        INTEGER,
    notes              TEXT,
    event_time         TIMESTAMP,
    source_type        VARCHAR,
    source_id          BIGINT,
    source_marker      BIGINT,
    previous_change_id BIGINT,         -- the key's change before this one; NULL: its first
    recorded_at        TIMESTAMP NOT NULL DEFAULT now(),
    run_id             TEXT
);
CREATE INDEX IF NOT EXISTS idx_job_status_changes_key
    ON job_status_changes (job_id, version_tag, operation, change_id);

-- Webhooks deliver the same stream: the outbox is filled from the changes, no longer from the
-- audit (whose in-place updates are not changes of the state).
DROP TRIGGER IF EXISTS job_status_updates_outbox_insert ON job_status_updates;
DROP TRIGGER IF EXISTS job_status_updates_outbox_update ON job_status_updates;
-- An outbox row of a change holds no copy of it (its payload is JSON null): the body is built
-- from the change when it is sent (jobstatus_delivery_body), so a subscription costs a change
-- one narrow row, not a JSON document (bench/change_triggers.py). Rows of the audit-row outbox
-- keep their payload. Only our own triggers are dropped, never a column (R1).
ALTER TABLE webhook_outbox ADD COLUMN IF NOT EXISTS change_id BIGINT;

CREATE OR REPLACE FUNCTION jobstatus_change_payload(c jsonb, delivery uuid)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'delivery_id', delivery, 'event', c -> 'event', 'update_id', c -> 'change_id',
        'change_id', c -> 'change_id', 'previous_change_id', c -> 'previous_change_id',
        'job_id', c -> 'job_id', 'version_tag', c -> 'version_tag',
        'operation', c -> 'operation', 'status', c -> 'status',
        'printed_count', c -> 'printed_count', 'aborted_count', c -> 'aborted_count',
        'total_count', c -> 'total_count', 'notes', c -> 'notes',
        'event_time', CASE WHEN c ->> 'event_time' IS NULL THEN 'null'::jsonb
                           ELSE to_jsonb((c ->> 'event_time') || 'Z') END,
        'recorded_at', to_jsonb((c ->> 'recorded_at') || 'Z'),
        'source_type', c -> 'source_type', 'source_id', c -> 'source_id',
        'source_marker', c -> 'source_marker')
$$;

-- What a receiver gets for one outbox row: its stored payload, or the change it delivers.
CREATE OR REPLACE FUNCTION jobstatus_delivery_body(outbox_row webhook_outbox)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN outbox_row.change_id IS NULL THEN outbox_row.payload
                ELSE (SELECT jobstatus_change_payload(to_jsonb(c), outbox_row.delivery_id)
                      FROM job_status_changes c WHERE c.change_id = outbox_row.change_id) END
$$;

CREATE OR REPLACE FUNCTION jobstatus_enqueue_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_outbox (delivery_id, subscription_id, update_id, change_id, job_id,
                                event, payload)
    SELECT gen_random_uuid(), s.subscription_id, n.change_id, n.change_id, n.job_id, n.event,
           'null'::jsonb
    FROM new_rows n
    JOIN webhook_subscriptions s
      ON s.deleted_at IS NULL AND (s.operations IS NULL OR n.operation = ANY (s.operations))
    ORDER BY n.change_id, s.subscription_id;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER job_status_changes_outbox
    AFTER INSERT ON job_status_changes REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobstatus_enqueue_changes();
