-- Every API object (file, fine-tuning job, eval, eval run, output item) is one row: its JSON as the
-- API returns it, plus the columns lists filter and order on. `seq` gives a stable creation order
-- for cursor pagination (`after=<id>`), independent of clock resolution.
CREATE TABLE objects (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL,
    id         TEXT    NOT NULL UNIQUE,
    parent     TEXT,
    status     TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    body       TEXT    NOT NULL
);
CREATE INDEX objects_kind_parent ON objects (kind, parent, seq);
CREATE INDEX objects_kind_status ON objects (kind, status, seq);
