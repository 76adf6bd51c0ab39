-- The integration API: the change feed, job lists, webhooks. Additive and idempotent (R1).

-- The change feed reads the audit in update_id order and must never skip a row (the R19
-- problem on our own table): an id drawn by a transaction that commits after a higher id is
-- already visible would be passed over by a reader that saw the higher one. So ids are drawn
-- under the writers' lock (io/writer.py WRITER_LOCK, transaction-scoped, released only after
-- commit): every id is greater than every id of a transaction that committed before, and no
-- lower id can become visible later. The writer already holds the lock (re-entrant, free);
-- any other writer of the audit now waits for it. A trigger rather than a new column default,
-- so the shop's view of the column is unchanged (R1); existing rows keep their ids.
CREATE OR REPLACE FUNCTION jobstatus_draw_update_id() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7316052209);
    NEW.update_id := nextval('job_status_updates_update_id_seq'::regclass);  -- the column's own
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER job_status_updates_draw_id
    BEFORE INSERT ON job_status_updates
    FOR EACH ROW EXECUTE FUNCTION jobstatus_draw_update_id();

-- Job lists filter on an operation's status and on when a job's state last changed.
CREATE INDEX IF NOT EXISTS idx_job_operation_state_status
    ON job_operation_state (operation, status, job_id);
CREATE INDEX IF NOT EXISTS idx_job_operation_state_updated
    ON job_operation_state (updated_at, job_id);
CREATE INDEX IF NOT EXISTS idx_job_print_state_updated ON job_print_state (updated_at, job_id);

-- Webhook subscriptions: the secret signs each body and is never returned by the API.
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    subscription_id BIGSERIAL PRIMARY KEY,
    url             TEXT NOT NULL,
    secret          TEXT NOT NULL,
    operations      TEXT[],            -- NULL: every operation
    created_at      TIMESTAMP NOT NULL DEFAULT now(),
    deleted_at      TIMESTAMP          -- kept for the deliveries' history
);

-- The outbox (R18): one row per (subscription, status change), written by the audit's own
-- statements in the writer's jobmanager transaction, so a change is delivered if and only if
-- it committed. delivery_id is the receiver's de-duplication key, the same on every attempt.
CREATE TABLE IF NOT EXISTS webhook_outbox (
    outbox_id       BIGSERIAL PRIMARY KEY,
    delivery_id     UUID NOT NULL UNIQUE,
    subscription_id BIGINT NOT NULL REFERENCES webhook_subscriptions (subscription_id),
    update_id       BIGINT NOT NULL,
    job_id          TEXT NOT NULL,
    event           TEXT NOT NULL,      -- 'status' | 'withdrawn'
    payload         JSONB NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',  -- 'pending' | 'delivered' | 'failed'
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL DEFAULT now(),
    last_error      TEXT,
    created_at      TIMESTAMP NOT NULL DEFAULT now(),
    finished_at     TIMESTAMP
);
-- The head of each (subscription, job) queue: deliveries of one job go out in order.
CREATE INDEX IF NOT EXISTS idx_webhook_outbox_pending
    ON webhook_outbox (subscription_id, job_id, outbox_id) WHERE state = 'pending';

CREATE TABLE IF NOT EXISTS webhook_attempts (
    attempt_id   BIGSERIAL PRIMARY KEY,
    outbox_id    BIGINT NOT NULL REFERENCES webhook_outbox (outbox_id),
    attempt      INTEGER NOT NULL,
    attempted_at TIMESTAMP NOT NULL DEFAULT now(),
    status_code  INTEGER,
    error        TEXT,
    duration_ms  INTEGER,
    run_id       TEXT
);
CREATE INDEX IF NOT EXISTS idx_webhook_attempts_outbox ON webhook_attempts (outbox_id);

-- What a receiver gets for one audit row (given as jsonb: a transition table's rows are records).
-- Times are naive UTC in the table; to_jsonb gives them as ISO 8601 without a zone, so a 'Z'
-- is appended: the same text the API answers (e.g. 2026-11-30T04:06:04.954847Z).
CREATE OR REPLACE FUNCTION jobstatus_webhook_payload(u jsonb, event text, delivery uuid)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'delivery_id', delivery, 'event', event, 'update_id', u -> 'update_id',
        'job_id', u -> 'job_id', 'version_tag', u -> 'version_tag',
        'operation', u -> 'operation', 'status', u -> 'status', 'applied', u -> 'applied',
        'printed_count', u -> 'printed_count', 'aborted_count', u -> 'aborted_count',
        'total_count', u -> 'total_count', 'notes', u -> 'notes',
        'event_time', to_jsonb((u ->> 'event_time') || 'Z'),
        'processed_at', to_jsonb((u ->> 'processed_at') || 'Z'),
        'source_type', u -> 'source_type', 'source_id', u -> 'source_id',
        'withdrawn_at', to_jsonb((u ->> 'withdrawn_at') || 'Z'))
$$;

-- A change lands when an audit row is applied (new, or newly applied, or its status changed
-- while applied), or when it is withdrawn (R22b). Statement-level: one set-based INSERT per
-- audit statement, whatever the number of rows.
CREATE OR REPLACE FUNCTION jobstatus_enqueue_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_outbox (delivery_id, subscription_id, update_id, job_id, event, payload)
    SELECT c.delivery, c.subscription_id, c.update_id, c.job_id, 'status',
           jobstatus_webhook_payload(c.row, 'status', c.delivery)
    FROM (
        SELECT gen_random_uuid() AS delivery, s.subscription_id, n.update_id, n.job_id, to_jsonb(n) AS row
        FROM new_rows n
        JOIN webhook_subscriptions s
          ON s.deleted_at IS NULL AND (s.operations IS NULL OR n.operation = ANY (s.operations))
        WHERE n.applied AND n.withdrawn_at IS NULL
        ORDER BY n.update_id, s.subscription_id
    ) c;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION jobstatus_enqueue_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_outbox (delivery_id, subscription_id, update_id, job_id, event, payload)
    SELECT c.delivery, c.subscription_id, c.update_id, c.job_id, c.event,
           jobstatus_webhook_payload(c.row, c.event, c.delivery)
    FROM (
        SELECT gen_random_uuid() AS delivery, s.subscription_id, n.update_id, n.job_id,
               to_jsonb(n) AS row,
               CASE WHEN n.withdrawn_at IS NOT NULL THEN 'withdrawn' ELSE 'status' END AS event
        FROM new_rows n
        JOIN old_rows o ON o.update_id = n.update_id
        JOIN webhook_subscriptions s
          ON s.deleted_at IS NULL AND (s.operations IS NULL OR n.operation = ANY (s.operations))
        WHERE (n.withdrawn_at IS NOT NULL AND o.withdrawn_at IS NULL)
           OR (n.applied AND n.withdrawn_at IS NULL
               AND (NOT o.applied OR o.withdrawn_at IS NOT NULL
                    OR n.status IS DISTINCT FROM o.status))
        ORDER BY n.update_id, s.subscription_id
    ) c;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER job_status_updates_outbox_insert
    AFTER INSERT ON job_status_updates REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobstatus_enqueue_inserted();
CREATE OR REPLACE TRIGGER job_status_updates_outbox_update
    AFTER UPDATE ON job_status_updates REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobstatus_enqueue_updated();
