-- A job's events, in the database rather than a file in its folder, so every API process lists
-- them and a worker that takes a job over carries on numbering. `key` makes writing an event
-- idempotent: a step retrained after a takeover writes its events under the same keys, and the
-- second write is dropped. `seq` is global and only grows: event ids are built from it.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    UNIQUE (job_id, key)
);
-- Who runs an object (a job) and until when. A lease row outlives its holder: `epoch` counts
-- claims, so a worker that lost its lease cannot renew or write under it again.
CREATE TABLE leases (
    id         TEXT    PRIMARY KEY,
    owner      TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
