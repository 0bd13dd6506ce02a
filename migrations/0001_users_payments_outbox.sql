-- Users, payments, the transactional outbox and idempotency keys.
-- Money is an integer count of the currency's minor units (cents, fils, yen).

CREATE TABLE IF NOT EXISTS users (
    id          CHAR(36)     NOT NULL,
    email       VARCHAR(254) NOT NULL,
    name        VARCHAR(200) NOT NULL,
    version     INT UNSIGNED NOT NULL DEFAULT 1,
    created_at  DATETIME(6)  NOT NULL,
    updated_at  DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_users_email (email)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS payments (
    id            CHAR(36)     NOT NULL,
    user_id       CHAR(36)     NOT NULL,
    amount_minor  BIGINT       NOT NULL,
    currency      CHAR(3)      NOT NULL,
    description   VARCHAR(500) NULL,
    status        VARCHAR(16)  NOT NULL,
    version       INT UNSIGNED NOT NULL DEFAULT 1,
    created_at    DATETIME(6)  NOT NULL,
    updated_at    DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    -- GET /users/:id/payments, newest first, with and without a status filter.
    KEY ix_payments_user_created (user_id, created_at, id),
    KEY ix_payments_user_status_created (user_id, status, created_at, id),
    CONSTRAINT fk_payments_user FOREIGN KEY (user_id) REFERENCES users (id),
    CONSTRAINT ck_payments_amount CHECK (amount_minor > 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS outbox (
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    event_id      CHAR(36)     NOT NULL,
    event_type    VARCHAR(32)  NOT NULL,
    partition_key VARCHAR(64)  NOT NULL,
    payload       MEDIUMTEXT   NOT NULL,
    created_at    DATETIME(6)  NOT NULL,
    published_at  DATETIME(6)  NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_outbox_event (event_id),
    KEY ix_outbox_pending (published_at, id),
    -- Replay of one user's recent events to a reconnecting WebSocket client.
    KEY ix_outbox_user (partition_key, id),
    KEY ix_outbox_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS idempotency_keys (
    idem_key       VARCHAR(255) NOT NULL,
    request_hash   CHAR(64)     NOT NULL,
    status_code    SMALLINT     NULL,
    response_body  MEDIUMTEXT   NULL,
    created_at     DATETIME(6)  NOT NULL,
    PRIMARY KEY (idem_key),
    KEY ix_idempotency_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
