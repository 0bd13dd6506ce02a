-- Makes FerretDB 1.24's _id lookups on PostgreSQL use an index (run by
-- devstack/services.sh on every start, as the superuser, in FerretDB's database;
-- idempotent). Measured in docs/BENCHMARKS.md ("Analytics on FerretDB").
--
-- FerretDB stores each collection as a table with one jsonb column, _jsonb, and
-- gives it a unique btree index on (_jsonb -> '_id'). But it filters on _id with
-- (_jsonb -> '_id') @> '"value"', which a btree cannot serve: every find, update
-- or delete by _id scans the whole table, so its cost grows with the collection.
-- A GIN index on the same expression serves @>. This event trigger adds one to
-- every table FerretDB creates, and the DO block below to the tables it already has.

CREATE OR REPLACE FUNCTION public.ferretdb_id_gin(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = '_jsonb' AND NOT attisdropped)
     AND NOT EXISTS (SELECT FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
                     WHERE i.indrelid = tbl AND am.amname = 'gin') THEN
    -- fastupdate off: no pending list that every lookup would have to scan.
    EXECUTE format('CREATE INDEX ON %s USING gin ((_jsonb -> ''_id'') jsonb_path_ops) WITH (fastupdate = off)', tbl);
  END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION public.ferretdb_id_gin_on_create() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  r record;
BEGIN
  FOR r IN SELECT objid FROM pg_event_trigger_ddl_commands()
           WHERE command_tag = 'CREATE TABLE' AND object_type = 'table' LOOP
    PERFORM public.ferretdb_id_gin(r.objid::regclass);
  END LOOP;
END
$fn$;

DROP EVENT TRIGGER IF EXISTS ferretdb_id_gin;
CREATE EVENT TRIGGER ferretdb_id_gin ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
  EXECUTE FUNCTION public.ferretdb_id_gin_on_create();

DO $do$
DECLARE
  r record;
BEGIN
  FOR r IN SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'public') LOOP
    PERFORM public.ferretdb_id_gin(r.oid::regclass);
  END LOOP;
END
$do$;

-- FerretDB's driver prepares its statements; after five runs PostgreSQL may switch
-- to a generic plan chosen while the table was small (a sequential scan) and keep
-- it. Plan each query with its real value and the table's current size instead.
ALTER DATABASE :"dbname" SET plan_cache_mode = force_custom_plan;
