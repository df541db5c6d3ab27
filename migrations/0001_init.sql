-- The first schema of lorad. Times are unix seconds (REAL where sub-second
-- matters). Jobs keep their full validated spec as JSON text.

CREATE TABLE users (
    name        TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,      -- hex SHA-256 of the bearer token
    is_admin    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);

CREATE TABLE models (
    name        TEXT PRIMARY KEY,
    dir         TEXT NOT NULL,             -- absolute server-side directory
    info        TEXT NOT NULL,             -- JSON: architecture, sizes, files
    created_at  INTEGER NOT NULL
);

CREATE TABLE datasets (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    user        TEXT NOT NULL,
    filename    TEXT NOT NULL,
    format      TEXT NOT NULL,             -- jsonl | csv
    kind        TEXT NOT NULL,             -- chat | alpaca | completion | preference
    rows        INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    path        TEXT NOT NULL,
    info        TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL
);

CREATE TABLE sweeps (
    id          TEXT PRIMARY KEY,
    user        TEXT NOT NULL,
    template    TEXT NOT NULL,
    parameters  TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE jobs (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order
    id              TEXT NOT NULL UNIQUE,
    name            TEXT NOT NULL DEFAULT '',
    user            TEXT NOT NULL,
    model           TEXT NOT NULL,
    status          TEXT NOT NULL,         -- queued | running | succeeded | failed | cancelled
    priority        INTEGER NOT NULL DEFAULT 0,
    device          TEXT NOT NULL,         -- cpu | cuda | any
    spec            TEXT NOT NULL,
    sweep_id        TEXT,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER,
    error_code      TEXT,
    error_message   TEXT,
    worker          TEXT,
    retries         INTEGER NOT NULL DEFAULT 0,
    max_retries     INTEGER NOT NULL DEFAULT 3,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    step            INTEGER NOT NULL DEFAULT 0,
    total_steps     INTEGER NOT NULL DEFAULT 0,
    epoch           REAL NOT NULL DEFAULT 0,
    loss            REAL,
    eval_loss       REAL,
    tokens_per_s    REAL,
    lr              REAL,
    last_checkpoint_step INTEGER
);
CREATE INDEX jobs_by_status ON jobs(status, priority DESC, seq);
CREATE INDEX jobs_by_user ON jobs(user, seq);
CREATE INDEX jobs_by_sweep ON jobs(sweep_id, seq);

CREATE TABLE metrics (
    job_id      TEXT NOT NULL,
    name        TEXT NOT NULL,
    step        INTEGER NOT NULL,
    value       REAL,                      -- NULL: not finite
    wall_time   REAL NOT NULL,
    PRIMARY KEY (job_id, name, step)
) WITHOUT ROWID;
CREATE INDEX metrics_by_step ON metrics(job_id, step);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL,
    created_at  REAL NOT NULL,
    level       TEXT NOT NULL,
    message     TEXT NOT NULL
);
CREATE INDEX events_by_job ON events(job_id, id);

CREATE TABLE checkpoints (
    job_id      TEXT NOT NULL,
    step        INTEGER NOT NULL,
    dir         TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (job_id, step)
);

-- The workers lorad supervises, written by the event loop, read by the API.
CREATE TABLE workers (
    name        TEXT PRIMARY KEY,
    backend     TEXT NOT NULL,
    device      TEXT NOT NULL DEFAULT '',
    status      TEXT NOT NULL,             -- starting | idle | busy | dead
    job_id      TEXT,
    pid         INTEGER,
    threads     INTEGER NOT NULL DEFAULT 0,
    mem_bytes   INTEGER NOT NULL DEFAULT 0,
    version     TEXT NOT NULL DEFAULT '',
    restarts    INTEGER NOT NULL DEFAULT 0,
    last_seen   REAL,
    started_at  REAL
);
