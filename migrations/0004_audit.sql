-- Who did what, and what the service's own MariaDB user may do (docs/SECURITY.md).
--
-- From this migration on, migrations run as the migration user (mysql.migrate_user), which
-- owns the schema; the service runs as mysql.user, which holds no privilege of its own: it
-- takes them from the role singleton_app (created and granted to it, as its default role,
-- by whoever creates the users: devstack/services/mariadb.sh here). Each table's grants to
-- the role are below; a migration that adds a table grants what the service needs on it.

-- The key that created a payment (NULL for payments made before this migration). Not in the
-- payment's API view: GET /api/v1/audit-events shows it, with the rest of the story.
ALTER TABLE payments ADD COLUMN IF NOT EXISTS created_by_key_id CHAR(36) NULL AFTER status;

-- Append-only: written in the transaction of the change it records (domain/audit.py), never
-- updated, never deleted by the service (its user may not: see the grants). Key rows live in
-- the global home; a payment's rows on the payment's shard, and move with its logical shard.
CREATE TABLE IF NOT EXISTS audit_events (
    id             CHAR(36)     NOT NULL,
    created_at     DATETIME(6)  NOT NULL,
    actor_key_id   CHAR(36)     NULL,      -- NULL: an operator's command on the host, no API key
    request_id     VARCHAR(128) NULL,
    remote_ip      VARCHAR(45)  NULL,
    action         VARCHAR(64)  NOT NULL,  -- domain/audit.py's Action: "payment.created", ...
    resource_type  VARCHAR(32)  NOT NULL,
    resource_id    CHAR(36)     NOT NULL,
    -- The user whose shard holds the row (a payment's user): a shard move finds the rows by
    -- its id range. NULL for what lives in the home (API keys), which never moves.
    owner_id       CHAR(36)     NULL,
    changes        JSON         NOT NULL,  -- {"field": {"from": old, "to": new}}: no secret, no email
    PRIMARY KEY (id),
    KEY ix_audit_created (created_at, id),
    KEY ix_audit_type (resource_type, created_at, id),
    KEY ix_audit_resource (resource_type, resource_id, created_at, id),
    KEY ix_audit_owner (owner_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- What the service does, table by table (every statement it runs: domain/, managers/). No DDL,
-- and no UPDATE or DELETE of the audit trail or the status history. What only an operator's
-- command does (shard moves: domain/moves.py) runs as the migration user.
GRANT SELECT, INSERT, UPDATE ON users TO singleton_app;
GRANT SELECT, INSERT, UPDATE ON payments TO singleton_app;
GRANT SELECT, INSERT ON payment_status_history TO singleton_app;
GRANT SELECT, INSERT ON audit_events TO singleton_app;
-- The relay marks rows published; housekeeping deletes them past outbox.retention_hours.
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox TO singleton_app;
-- Housekeeping deletes keys past payments.idempotency_ttl_hours.
GRANT SELECT, INSERT, DELETE ON idempotency_keys TO singleton_app;
-- Revocation and last_used_at.
GRANT SELECT, INSERT, UPDATE ON api_keys TO singleton_app;
-- A stale claim is taken over; a changed email's old claim is released.
GRANT SELECT, INSERT, UPDATE, DELETE ON email_claims TO singleton_app;
GRANT SELECT ON shard_moves TO singleton_app;
GRANT SELECT ON logical_shards TO singleton_app;
GRANT SELECT ON schema_migrations TO singleton_app;

-- A move's write guard (domain/moves.py's GUARD) installed before this migration has the
-- service's user as its definer, which can no longer run a trigger: where there is one, it is
-- made again, the same, with the migration user as its definer.
BEGIN NOT ATOMIC IF EXISTS (SELECT 1 FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME = 'outbox_shard_guard') THEN DROP TRIGGER outbox_shard_guard; EXECUTE IMMEDIATE 'CREATE TRIGGER outbox_shard_guard BEFORE INSERT ON outbox FOR EACH ROW IF (SELECT state FROM logical_shards WHERE id = CONV(LEFT(NEW.partition_key, 3), 16, 10) DIV 4 LOCK IN SHARE MODE) <> ''home'' THEN SIGNAL SQLSTATE ''45000'' SET MESSAGE_TEXT = ''logical shard not writable here: moving or moved'', MYSQL_ERRNO = 1644; END IF'; END IF; END;
