-- Metamorph projections, version 3: workflow streams (API.md §10, workflow.stream / handle.stream).
--
-- One row per StreamAppended event, numbered per workflow id: position 1, 2, 3, ... in the order of the
-- events log, across every run of the id (continue-as-new, retry, a reused id), so a reader following a
-- workflow id resumes with `after = last position seen` whatever run it was in. The number is assigned
-- here, by the projector, from the previous maximum: all events of one id are in one partition and are
-- applied in log order, exactly once, so a rebuild from offset 0 gives every item the same position.
-- The item itself stays in history.data (no second copy); readers join on (workflow_id, run_id, seq).
CREATE TABLE stream_items (
    workflow_id text   NOT NULL,
    position    bigint NOT NULL,
    run_id      text   NOT NULL,
    seq         bigint NOT NULL,
    PRIMARY KEY (workflow_id, position),
    UNIQUE (workflow_id, run_id, seq)
);
