-- Refunds as rows of their own, metadata on payments and users, and what a refund
-- records in the status history. (0004 is the audit trail's.)

-- A refund lives on its payment's shard: its id carries the payment's logical shard in
-- the same bits (managers/shards.py), so a read by id and a move find it by id range.
CREATE TABLE IF NOT EXISTS refunds (
    id            CHAR(36)     NOT NULL,
    payment_id    CHAR(36)     NOT NULL,
    user_id       CHAR(36)     NOT NULL,
    amount_minor  BIGINT       NOT NULL,
    currency      CHAR(3)      NOT NULL,
    reason        VARCHAR(32)  NULL,
    status        VARCHAR(16)  NOT NULL,
    created_at    DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    -- GET /payments/:id/refunds, oldest first.
    KEY ix_refunds_payment_created (payment_id, created_at, id),
    CONSTRAINT fk_refunds_payment FOREIGN KEY (payment_id) REFERENCES payments (id),
    CONSTRAINT ck_refunds_amount CHECK (amount_minor > 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- What has been given back so far; a refund and this sum change in one transaction,
-- under the payment's row lock. Metadata: a JSON object of strings (domain/metadata.py).
ALTER TABLE payments
    ADD COLUMN IF NOT EXISTS amount_refunded_minor BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS metadata TEXT NULL,
    ADD CONSTRAINT ck_payments_refunded CHECK (amount_refunded_minor >= 0 AND amount_refunded_minor <= amount_minor);

ALTER TABLE users ADD COLUMN IF NOT EXISTS metadata TEXT NULL;

-- A refund is a row of the status history too (who refunded what), partial ones included:
-- `completed` to `completed` until the last one makes it `refunded`.
ALTER TABLE payment_status_history
    ADD COLUMN IF NOT EXISTS refund_id CHAR(36) NULL,
    ADD COLUMN IF NOT EXISTS refund_amount_minor BIGINT NULL;

-- GET /users/:id/payments?status=&created_gte=&created_lt= is served by the two indexes of
-- 0001 (user_id, created_at, id) and (user_id, status, created_at, id): a filter is an equality
-- or a range on a prefix of one of them (tests/handlers/test_payment_filters.py EXPLAINs it).

-- The service's rights on refunds (0004 says why a role): a refund is written once, with its
-- payment's change, and never updated or deleted by the service, like the status history.
GRANT SELECT, INSERT ON refunds TO singleton_app;
