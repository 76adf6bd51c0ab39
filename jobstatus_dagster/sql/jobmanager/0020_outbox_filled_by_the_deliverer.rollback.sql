-- Undoes 0020 for an older jobstatus (`jobstatus migrate --roll-back-after 0019`, run with the
-- newer version still installed, before installing the older wheel): that version's deliverer
-- does not queue changes, it relies on the trigger. First every change past a subscription's
-- position is queued (what the newer deliverer owed and had not queued yet), then the trigger
-- fills the outbox again for every change committed from here on. The position column and the
-- subscription trigger stay (additive, R1): the older version ignores them, and the newer one,
-- reinstalled, starts each subscription where this left it.
INSERT INTO webhook_outbox (delivery_id, subscription_id, update_id, change_id, job_id, event,
                            payload)
SELECT gen_random_uuid(), s.subscription_id, c.change_id, c.change_id, c.job_id, c.event,
       'null'::jsonb
FROM webhook_subscriptions s
JOIN job_status_changes c
  ON c.change_id > COALESCE(s.enqueued_up_to, 0)
 AND (s.operations IS NULL OR c.operation = ANY (s.operations))
WHERE s.deleted_at IS NULL AND s.disabled_at IS NULL
ORDER BY s.subscription_id, c.change_id;

UPDATE webhook_subscriptions
SET enqueued_up_to = COALESCE((SELECT max(change_id) FROM job_status_changes), 0);

CREATE OR REPLACE TRIGGER job_status_changes_outbox
    AFTER INSERT ON job_status_changes REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobstatus_enqueue_changes();
