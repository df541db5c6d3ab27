-- Tokens of remote workers (lora-worker agent --connect): made by an admin
-- with `lorad worker-token add NAME`, kept as SHA-256 like users' tokens,
-- revoked by deleting the row. A user's API token is never a worker token.
CREATE TABLE worker_tokens (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
