-- visibility: private (lorad.yaml). A model's owner is the user whose merge
-- made it; NULL for one an operator registered with `lorad model add`, a
-- base model every user may train on.
ALTER TABLE models ADD COLUMN owner TEXT;
-- A merge in progress remembers whose it is: the model it registers when it
-- succeeds takes that owner (store_model_add).
CREATE TABLE model_merges (
    name        TEXT PRIMARY KEY,
    user        TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
-- What an admin shared with whom (`lorad share KIND ID USER`): in private
-- mode the user sees and uses that dataset, job or model as if their own,
-- but cannot delete, cancel or merge it.
CREATE TABLE shares (
    kind        TEXT NOT NULL,             -- dataset | job | model
    id          TEXT NOT NULL,
    user        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (kind, id, user)
);
