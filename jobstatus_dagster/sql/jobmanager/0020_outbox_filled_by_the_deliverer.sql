-- R25 / issue 19: the webhooks' outbox is filled by the deliverer, from the change stream, no
-- longer by a trigger on every change insert. A write then pays nothing per subscription (the
-- trigger made the change insert 2.8x dearer with one subscription, 22x with ten,
-- bench/change_triggers.py); the delivery run copies the changes past each subscription's
-- position into the outbox in batches (io/outbox.py enqueue_changes), then delivers as before.
-- Additive and idempotent (R1): a new nullable column, a trigger of ours replaced.

-- The last change copied into the outbox for this subscription. Change ids are drawn under the
-- writers' lock and committed in order, so every snapshot sees a gap-free prefix of the stream
-- and "past the position" never skips a change committed later.
ALTER TABLE webhook_subscriptions ADD COLUMN IF NOT EXISTS enqueued_up_to BIGINT;

-- Existing subscriptions: the trigger had queued every change so far (on a first upgrade, and
-- again after a roll-back past 0020 brought the trigger back: the rollback file).
UPDATE webhook_subscriptions
SET enqueued_up_to = COALESCE((SELECT max(change_id) FROM job_status_changes), 0)
WHERE enqueued_up_to IS NULL
   OR EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'job_status_changes_outbox'
                AND tgrelid = 'job_status_changes'::regclass);

-- A new subscription starts at the stream's end (it is sent the changes after it, as before):
-- set on insert, whoever inserts it.
CREATE OR REPLACE FUNCTION jobstatus_subscription_position() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.enqueued_up_to IS NULL THEN
        NEW.enqueued_up_to := COALESCE((SELECT max(change_id) FROM job_status_changes), 0);
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER webhook_subscriptions_position
    BEFORE INSERT ON webhook_subscriptions
    FOR EACH ROW EXECUTE FUNCTION jobstatus_subscription_position();

DROP TRIGGER IF EXISTS job_status_changes_outbox ON job_status_changes;
