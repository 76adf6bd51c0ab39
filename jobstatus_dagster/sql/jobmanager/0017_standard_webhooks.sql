-- Standard Webhooks (issue 19): secret rotation and subscriptions the receiver ended.
-- Additive and idempotent (R1): new columns only, all nullable.

-- A rotation keeps the replaced secret signing beside the new one until it expires
-- (JOBSTATUS_WEBHOOK_SECRET_OVERLAP_SECONDS after the rotation): both signatures are sent.
ALTER TABLE webhook_subscriptions ADD COLUMN IF NOT EXISTS previous_secret TEXT;
ALTER TABLE webhook_subscriptions ADD COLUMN IF NOT EXISTS previous_secret_expires_at TIMESTAMP;
ALTER TABLE webhook_subscriptions ADD COLUMN IF NOT EXISTS secret_rotated_at TIMESTAMP;

-- A receiver answering 410 Gone ends its subscription: no more attempts, and GET /api/webhooks
-- says when and why.
ALTER TABLE webhook_subscriptions ADD COLUMN IF NOT EXISTS disabled_at TIMESTAMP;
ALTER TABLE webhook_subscriptions ADD COLUMN IF NOT EXISTS disabled_reason TEXT;

-- The latest attempt, whatever its outcome: a receiver that has been failing for hours shows it
-- long before a delivery is given up (about 29 h with the defaults).
ALTER TABLE webhook_subscriptions ADD COLUMN IF NOT EXISTS last_attempt_at TIMESTAMP;
ALTER TABLE webhook_subscriptions ADD COLUMN IF NOT EXISTS last_attempt_status INTEGER;
ALTER TABLE webhook_subscriptions ADD COLUMN IF NOT EXISTS last_attempt_error TEXT;

-- A disabled subscription (its receiver answered 410 Gone) is owed no new change (R25's stream
-- as 0016 enqueues it, minus those subscriptions).
CREATE OR REPLACE FUNCTION jobstatus_enqueue_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_outbox (delivery_id, subscription_id, update_id, change_id, job_id,
                                event, payload)
    SELECT gen_random_uuid(), s.subscription_id, n.change_id, n.change_id, n.job_id, n.event,
           'null'::jsonb
    FROM new_rows n
    JOIN webhook_subscriptions s
      ON s.deleted_at IS NULL AND s.disabled_at IS NULL
     AND (s.operations IS NULL OR n.operation = ANY (s.operations))
    ORDER BY n.change_id, s.subscription_id;
    RETURN NULL;
END $$;
