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
-- The first move from a server installs the trigger that enforces it (domain/moves.py).
CREATE TABLE IF NOT EXISTS logical_shards (
    id          SMALLINT UNSIGNED NOT NULL,
    state       VARCHAR(8)   NOT NULL DEFAULT 'home',
    PRIMARY KEY (id),
    CONSTRAINT ck_logical_shards_state CHECK (state IN ('home', 'frozen', 'moved'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

INSERT IGNORE INTO logical_shards (id) SELECT seq FROM seq_0_to_1023;

-- Idempotency keys are stored as "<user id>|<caller's scope>:<key>": they live on the
-- payment's user's shard, and a move finds them by the user's id range.
ALTER TABLE idempotency_keys MODIFY idem_key VARCHAR(340) NOT NULL;
