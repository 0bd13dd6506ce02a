-- Sharding by user (managers/shards.py). Every physical shard has the same schema; the
-- global tables (api_keys, email_claims, shard_moves) are used in the home only.

-- A user key's user may live on any shard: the home cannot hold a foreign key to it.
-- domain/auth.py checks the user on its shard instead.
ALTER TABLE api_keys DROP FOREIGN KEY fk_api_keys_user;

-- Email is unique across shards: a create claims the email here first, then writes the
-- user on its shard (domain/users.py says how a claim whose user never arrived is reclaimed).
CREATE TABLE IF NOT EXISTS email_claims (
    email       VARCHAR(254) NOT NULL,
    user_id     CHAR(36)     NOT NULL,
    claimed_at  DATETIME(6)  NOT NULL,
    PRIMARY KEY (email),
    KEY ix_email_claims_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Users made before claims existed (all of them in the one database sharding starts from).
INSERT IGNORE INTO email_claims (email, user_id, claimed_at) SELECT email, id, created_at FROM users;

-- Logical shards moved away from config's map: every instance routes by config's map
-- with these on top (`python -m service shards move` writes them).
CREATE TABLE IF NOT EXISTS shard_moves (
    logical     SMALLINT UNSIGNED NOT NULL,
    physical    VARCHAR(32)  NOT NULL,
    moved_at    DATETIME(6)  NOT NULL,
    PRIMARY KEY (logical)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Each logical shard's state on this server: home (writes go through), frozen (a move's
-- final switch: writes are refused until it is done) or moved (it lives elsewhere now).
CREATE TABLE IF NOT EXISTS logical_shards (
    id          SMALLINT UNSIGNED NOT NULL,
    state       VARCHAR(8)   NOT NULL DEFAULT 'home',
    PRIMARY KEY (id),
    CONSTRAINT ck_logical_shards_state CHECK (state IN ('home', 'frozen', 'moved'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

INSERT IGNORE INTO logical_shards (id) SELECT seq FROM seq_0_to_1023;

-- Every change of a user's writes an outbox row in its transaction, so this guard sees
-- every write: it share-locks the logical shard's row (a move's freeze waits for the
-- writes in flight, and the writes after it see the freeze) and refuses writes to a
-- logical shard that is not at home here. Error 1644 with this text is ShardMoving.
CREATE TRIGGER outbox_shard_guard BEFORE INSERT ON outbox FOR EACH ROW
IF (SELECT state FROM logical_shards WHERE id = CONV(LEFT(NEW.partition_key, 3), 16, 10) DIV 4 LOCK IN SHARE MODE) <> 'home'
THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'logical shard not writable here: moving or moved', MYSQL_ERRNO = 1644; END IF;

-- Idempotency keys are stored as "<user id>|<caller's scope>:<key>": they live on the
-- payment's user's shard, and a move finds them by the user's id range.
ALTER TABLE idempotency_keys MODIFY idem_key VARCHAR(340) NOT NULL;
