-- Checkpoints in parts (format 5): a checkpoint row's `state` is its head (everything but
-- the stores); each store's state is a row here, written by the checkpoint whose id is its
-- `version`, only when the store changed since that process's previous checkpoint. A
-- process's first checkpoint writes every store and starts a chain: `base_id` (on both
-- tables) is that first checkpoint's id, so two processes of one group never mix parts.
-- The state of checkpoint C: its head and, per store, the part of C's chain with the
-- greatest version <= C.id.
ALTER TABLE checkpoints ADD COLUMN base_id BIGINT;

CREATE TABLE checkpoint_stores (
    group_name  TEXT    NOT NULL,
    base_id     BIGINT  NOT NULL,
    store_id    TEXT    NOT NULL,
    version     BIGINT  NOT NULL,
    state       BYTEA   NOT NULL,
    -- A newer version of the store exists in the chain: a candidate for pruning once no
    -- kept checkpoint reads this one.
    superseded  BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (group_name, base_id, store_id, version)
);

CREATE INDEX checkpoint_stores_superseded ON checkpoint_stores (group_name, base_id)
    WHERE superseded;
