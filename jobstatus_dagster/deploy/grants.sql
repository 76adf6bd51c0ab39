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

-- No DDL, whatever the PostgreSQL version and however the cluster was set up. Before
-- PostgreSQL 15 every role could CREATE in the public schema (a cluster upgraded with
-- pg_upgrade keeps that grant): taken back from PUBLIC here, as PostgreSQL's own advice since
-- CVE-2018-1058 says (a shop role that must create tables there needs a grant by name). Only
-- the schema's owner can revoke it: the database's owner from PostgreSQL 15 on
-- (pg_database_owner), else the role that created the database. Then from the role itself, in
-- case it was ever granted; the check at the end fails if any way to DDL is left.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SELECT format('REVOKE CREATE ON SCHEMA public FROM %I', :'role')
\gexec
SELECT format('REVOKE CREATE ON DATABASE %I FROM %I', current_database(), :'role')
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

-- The check: the role can create nothing and alter nothing in this database. It fails the script
-- (exit 3) naming what is left: a role attribute (superuser, CREATEDB, CREATEROLE), CREATE on the
-- database (new schemas, e.g. granted to PUBLIC) or on a schema (the REVOKE above could not
-- take it: run this file as the owner of the database), or membership of a role owning a table
-- or schema (an owner may ALTER and DROP).
SELECT format('DO %s BEGIN RAISE EXCEPTION %L; END %s', '$do$',
              format('grants.sql: role %s could still do DDL in database %s: %s', :'role',
                     current_database(), string_agg(problem, '; ')), '$do$')
FROM (
    SELECT 'it is a superuser' AS problem FROM pg_roles WHERE rolname = :'role' AND rolsuper
    UNION ALL
    SELECT 'it has CREATEDB' FROM pg_roles WHERE rolname = :'role' AND rolcreatedb
    UNION ALL
    SELECT 'it has CREATEROLE' FROM pg_roles WHERE rolname = :'role' AND rolcreaterole
    UNION ALL
    SELECT 'CREATE on the database'
    WHERE has_database_privilege(:'role', current_database(), 'CREATE')
    UNION ALL
    SELECT format('CREATE on schema %I', nspname) FROM pg_namespace
    WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema'
      AND has_schema_privilege(:'role', oid, 'CREATE')
    UNION ALL
    SELECT format('it owns, or is a member of the owner %I of, schema %I', pg_get_userbyid(nspowner), nspname)
    FROM pg_namespace
    WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema'
      AND pg_has_role(:'role', nspowner, 'USAGE')
    UNION ALL
    SELECT format('it owns, or is a member of the owner %I of, %s', pg_get_userbyid(c.relowner), c.oid::regclass)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
      AND pg_has_role(:'role', c.relowner, 'USAGE')
) AS problems
HAVING count(*) > 0
\gexec
