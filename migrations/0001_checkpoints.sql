-- Checkpoints: the serialised aggregate state and the Kafka positions it reflects,
-- written together in one transaction. `group_name` namespaces replicas (the Kafka
-- consumer group); a checkpoint of another format version or partition layout is never
-- read back (the process rebuilds from Kafka instead).
CREATE TABLE checkpoints (
    id                 BIGSERIAL   PRIMARY KEY,
    group_name         TEXT        NOT NULL,
    format_version     INTEGER     NOT NULL,
    layout_tag         TEXT        NOT NULL,
    position           TEXT        NOT NULL,
    newest_event_time  BIGINT      NOT NULL,
    state              BYTEA       NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX checkpoints_newest ON checkpoints (group_name, id DESC);

-- The same positions, one row per partition, for operators and lag queries.
CREATE TABLE checkpoint_positions (
    checkpoint_id  BIGINT  NOT NULL REFERENCES checkpoints (id) ON DELETE CASCADE,
    topic          TEXT    NOT NULL,
    partition      INTEGER NOT NULL,
    next_offset    BIGINT  NOT NULL,
    PRIMARY KEY (checkpoint_id, topic, partition)
);
