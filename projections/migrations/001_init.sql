-- Metamorph projections, version 1.
--
-- Applied by projections.migrate inside the namespace's schema (search_path = mm_<namespace>), so names
-- here are unqualified. Everything below is derived from <ns>.events by the projector and can be rebuilt
-- from offset 0; every timestamp comes from the events themselves (never now()), so a rebuild produces
-- identical rows. The only exceptions are projector_offsets.updated_at (when the projector last made
-- progress) and rows that record_pending() writes before the projector has seen the start.
--
-- Statuses: pending, running, waiting, blocked (not terminal); completed, failed, continued, cancelled,
-- terminated (terminal). There is deliberately no CHECK on them: a newer node writing a status this
-- version does not know must not make the projector choke on its events.

-- One row per run of a workflow (continue-as-new and retry start new runs under the same workflow id).
CREATE TABLE runs (
    workflow_id     text        NOT NULL,
    run_id          text        NOT NULL,
    run_no          integer     NOT NULL,          -- 1, 2, 3... in the order the runs started
    type            text        NOT NULL,
    status          text        NOT NULL,
    input           jsonb,
    output          jsonb,
    error_type      text,
    error_message   text,
    error_traceback text,
    parent_id       text,
    parent_run_id   text,
    parent_ref      bigint,
    continued_from  text,                          -- the run this one continues (continue-as-new, retry)
    continued_to    text,                          -- the run that continues this one
    started_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    closed_at       timestamptz,
    PRIMARY KEY (workflow_id, run_id)
);
CREATE UNIQUE INDEX runs_run_id ON runs (run_id, workflow_id);

-- One row per workflow id: a copy of its newest run (what a handle that follows continue-as-new sees),
-- plus created_at, the start of its first run. run_id is NULL while a client has recorded the start
-- (status pending) and the projector has not yet seen it.
CREATE TABLE workflows (
    id              text        PRIMARY KEY,
    run_id          text,
    type            text        NOT NULL,
    status          text        NOT NULL,
    input           jsonb,
    output          jsonb,
    error_type      text,
    error_message   text,
    error_traceback text,
    parent_id       text,
    parent_run_id   text,
    continued_from  text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    started_at      timestamptz,
    closed_at       timestamptz
);
-- Listing is newest first, optionally filtered by status, type or parent.
CREATE INDEX workflows_created ON workflows (created_at DESC, id DESC);
CREATE INDEX workflows_status_created ON workflows (status, created_at DESC, id DESC);
CREATE INDEX workflows_type_created ON workflows (type, created_at DESC, id DESC);
CREATE INDEX workflows_type_status_created ON workflows (type, status, created_at DESC, id DESC);
CREATE INDEX workflows_parent ON workflows (parent_id, created_at DESC) WHERE parent_id IS NOT NULL;
CREATE INDEX workflows_updated ON workflows (updated_at DESC);

-- Every event of every run, as written (partition markers excluded). data holds the event body, with
-- user payloads (input, result...) decoded to JSON where the converter can.
CREATE TABLE history (
    workflow_id text        NOT NULL,
    run_id      text        NOT NULL,
    seq         bigint      NOT NULL,
    type        text        NOT NULL,
    at          timestamptz NOT NULL,
    status      text,                              -- the run's status after this event, when the node set it
    epoch       bigint      NOT NULL,
    node        text        NOT NULL DEFAULT '',
    partition   integer     NOT NULL,
    log_offset  bigint      NOT NULL,              -- where the event is in <ns>.events, for operators
    data        jsonb       NOT NULL,
    PRIMARY KEY (workflow_id, run_id, seq)
);
CREATE INDEX history_type_at ON history (type, at);

-- One row per activity attempt. status: scheduled (dispatched, no outcome yet), completed, failed (the
-- final attempt failed), retrying (this attempt failed and another one follows at retry_at).
CREATE TABLE activities (
    workflow_id text        NOT NULL,
    run_id      text        NOT NULL,
    activity_id bigint      NOT NULL,              -- the seq of its ActivityScheduled event
    attempt     integer     NOT NULL,
    name        text        NOT NULL,
    queue       text        NOT NULL,
    status      text        NOT NULL,
    input       jsonb,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    result      jsonb,
    error_type  text,
    message     text,
    traceback   text,
    retry_at    timestamptz,
    PRIMARY KEY (workflow_id, run_id, activity_id, attempt)
);
CREATE INDEX activities_name_status ON activities (name, status, started_at DESC);
CREATE INDEX activities_open ON activities (queue, started_at) WHERE status = 'scheduled';

CREATE TABLE signals (
    workflow_id text        NOT NULL,
    run_id      text        NOT NULL,
    seq         bigint      NOT NULL,
    name        text        NOT NULL,
    input       jsonb,
    command_id  text        NOT NULL,
    at          timestamptz NOT NULL,
    PRIMARY KEY (workflow_id, run_id, seq)
);

-- One row per failed activity attempt (retried or final) and one for a workflow's own failure
-- (activity and attempt NULL), in history order.
CREATE TABLE exceptions (
    workflow_id text        NOT NULL,
    run_id      text        NOT NULL,
    seq         bigint      NOT NULL,
    activity_id bigint,
    activity    text,
    attempt     integer,
    error_type  text        NOT NULL,
    message     text        NOT NULL,
    traceback   text        NOT NULL DEFAULT '',
    at          timestamptz NOT NULL,
    PRIMARY KEY (workflow_id, run_id, seq)
);
CREATE INDEX exceptions_at ON exceptions (at DESC);
CREATE INDEX exceptions_error_type ON exceptions (error_type, at DESC);

CREATE TABLE timers (
    workflow_id text        NOT NULL,
    run_id      text        NOT NULL,
    timer_id    bigint      NOT NULL,              -- the seq of its TimerStarted event
    fire_at     timestamptz NOT NULL,
    status      text        NOT NULL,              -- started | fired
    started_at  timestamptz NOT NULL,
    fired_at    timestamptz,
    PRIMARY KEY (workflow_id, run_id, timer_id)
);
CREATE INDEX timers_due ON timers (fire_at) WHERE status = 'started';

-- Parent/child workflows (kind 'child') and the continue-as-new / retry chain (kind 'continued', where
-- parent and child are the same workflow id and the run ids say which run continued which). Both sides
-- of a child relationship may write the row, in either order; the merge is order-independent.
CREATE TABLE relationships (
    parent_id     text        NOT NULL,
    parent_run_id text        NOT NULL,
    kind          text        NOT NULL,
    child_id      text        NOT NULL,
    child_run_id  text,
    child_ref     bigint,                          -- the seq of the parent's ChildStarted
    workflow_type text,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (parent_id, parent_run_id, kind, child_id)
);
CREATE INDEX relationships_child ON relationships (child_id);

-- The projector's own bookkeeping, written in the same transaction as the views it describes.
CREATE TABLE projector_offsets (
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Highest ownership epoch seen per event partition (eventstore.fencing.Fence state).
CREATE TABLE projector_fence (
    partition integer PRIMARY KEY,
    epoch     bigint  NOT NULL
);
