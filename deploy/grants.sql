-- What the processing role (the one in JOBSTATUS_JOBMANAGER_URL and JOBSTATUS_LOGS_URL) may do,
-- once `jobstatus migrate` has run as the owner of the shop's tables: read the sources, update
-- the shop's status columns, read and write our own tables. No DDL anywhere, owns nothing.
-- Run it after every `jobstatus migrate` (a new version may add a table), in both databases,
-- as the owner of the shop's tables:
--
--   psql -v role=jobstatus -d jobmanager -f grants.sql
--   psql -v role=jobstatus -d logs -f grants.sql
--
-- Each line applies where its table exists, so the one file serves both databases.
\set ON_ERROR_STOP on

SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', current_database(), :'role')
\gexec
-- COPY into temporary tables is how a window is written (io/writer.py): TEMPORARY above.
SELECT format('GRANT USAGE ON SCHEMA public TO %I', :'role')
\gexec

SELECT format('GRANT %s ON TABLE %s TO %I', privileges, table_name, :'role')
FROM (VALUES
    -- jobmanager: the shop's tables
    ('SELECT', '"print OS"'),
    ('SELECT', 'scanned_codes'),
    ('SELECT', 'jobs'),
    ('UPDATE (operations)', 'jobs'),
    -- jobmanager: ours (sql/jobmanager)
    ('SELECT, INSERT, UPDATE, DELETE', 'processing_markers'),
    ('SELECT, INSERT, UPDATE, DELETE', 'processing_generation'),
    ('SELECT, INSERT, UPDATE, DELETE', 'processing_failures'),
    ('SELECT, INSERT, UPDATE, DELETE', 'processed_source_rows'),
    ('SELECT, INSERT, UPDATE, DELETE', 'job_status_updates'),
    ('SELECT, INSERT, UPDATE, DELETE', 'job_status_changes'),
    ('SELECT, INSERT, UPDATE, DELETE', 'job_version_state'),
    ('SELECT, INSERT, UPDATE, DELETE', 'job_print_state'),
    ('SELECT, INSERT, UPDATE, DELETE', 'job_operation_state'),
    ('SELECT, INSERT, UPDATE, DELETE', 'imposition_status_updates'),
    ('SELECT, INSERT, UPDATE, DELETE', 'webhook_subscriptions'),
    ('SELECT, INSERT, UPDATE, DELETE', 'webhook_outbox'),
    ('SELECT, INSERT, UPDATE, DELETE', 'webhook_attempts'),
    ('SELECT, INSERT, UPDATE, DELETE', 'alert_incidents'),
    -- logs: the shop's tables
    ('SELECT', 'imposition_file_mapping'),
    ('SELECT', 'production_planner_paths'),
    ('SELECT', 'operation_codes'),
    ('SELECT, UPDATE', 'imposition_operations'),
    ('SELECT, UPDATE', 'job_operations'),
    -- logs: ours (sql/logs)
    ('SELECT, INSERT, UPDATE, DELETE', 'operation_row_originals')
) AS grants(privileges, table_name)
WHERE to_regclass(table_name) IS NOT NULL
\gexec

-- The sequences behind our tables' ids.
SELECT format('GRANT USAGE, SELECT ON SEQUENCE %s TO %I', sequence_name, :'role')
FROM (VALUES
    ('alert_incidents_incident_id_seq'),
    ('imposition_status_updates_update_id_seq'),
    ('job_status_updates_update_id_seq'),
    ('processing_failures_failure_id_seq'),
    ('processing_markers_marker_id_seq'),
    ('webhook_attempts_attempt_id_seq'),
    ('webhook_outbox_outbox_id_seq'),
    ('webhook_subscriptions_subscription_id_seq')
) AS sequences(sequence_name)
WHERE to_regclass(sequence_name) IS NOT NULL
\gexec
