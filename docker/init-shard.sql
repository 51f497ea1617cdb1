-- Run on every shard node at first start.
CREATE TABLE IF NOT EXISTS accounts (
    id bigint PRIMARY KEY,
    owner text,
    balance bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS accounts_shard_hash ON accounts (hashint8extended(id, 0));
