-- API keys (only their hash is stored) and the append-only audit trail of payment status changes.

CREATE TABLE IF NOT EXISTS api_keys (
    id            CHAR(36)     NOT NULL,
    -- The key's first characters (its role and 8 of its random characters): enough to
    -- find the row and to tell keys apart in a listing, far too few to use.
    prefix        VARCHAR(32)  NOT NULL,
    -- SHA-256 of the whole key, hex. Keys carry 192 random bits, so a fast hash suffices.
    hash          CHAR(64)     NOT NULL,
    role          VARCHAR(16)  NOT NULL,
    user_id       CHAR(36)     NULL,
    created_at    DATETIME(6)  NOT NULL,
    last_used_at  DATETIME(6)  NULL,
    revoked_at    DATETIME(6)  NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_api_keys_prefix (prefix),
    KEY ix_api_keys_role (role, revoked_at),
    CONSTRAINT fk_api_keys_user FOREIGN KEY (user_id) REFERENCES users (id),
    CONSTRAINT ck_api_keys_role CHECK (
        (role = 'admin' AND user_id IS NULL) OR (role = 'user' AND user_id IS NOT NULL)
    )
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS payment_status_history (
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    payment_id    CHAR(36)     NOT NULL,
    from_status   VARCHAR(16)  NOT NULL,
    to_status     VARCHAR(16)  NOT NULL,
    version       INT UNSIGNED NOT NULL,
    actor_key_id  CHAR(36)     NULL,
    request_id    VARCHAR(128) NULL,
    remote_ip     VARCHAR(45)  NULL,
    created_at    DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_history_payment_version (payment_id, version),
    CONSTRAINT fk_history_payment FOREIGN KEY (payment_id) REFERENCES payments (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Idempotency keys are scoped to their caller ("admin", or "user:<id>" for a user key),
-- so two tenants choosing the same key never collide: the scope is stored before the key.
ALTER TABLE idempotency_keys MODIFY idem_key VARCHAR(320) NOT NULL;
