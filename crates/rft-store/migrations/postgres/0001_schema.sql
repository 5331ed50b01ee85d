-- PostgreSQL's schema: the same tables as SQLite's migrations 0001 to 0003 (see them for why
-- each exists), in PostgreSQL's types. Bodies stay TEXT (not jsonb): they are written and read
-- whole, byte for byte as the API returns them; filters cast them where needed.
CREATE TABLE objects (
    seq        BIGSERIAL PRIMARY KEY,
    kind       TEXT   NOT NULL,
    id         TEXT   NOT NULL UNIQUE,
    parent     TEXT,
    status     TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    body       TEXT   NOT NULL
);
CREATE INDEX objects_kind_parent ON objects (kind, parent, seq);
CREATE INDEX objects_kind_status ON objects (kind, status, seq);
CREATE INDEX objects_kind_seq ON objects (kind, seq);
CREATE INDEX objects_parent ON objects (parent);

CREATE TABLE events (
    seq        BIGSERIAL PRIMARY KEY,
    job_id     TEXT   NOT NULL,
    key        TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    body       TEXT   NOT NULL,
    UNIQUE (job_id, key)
);

CREATE TABLE leases (
    id         TEXT   PRIMARY KEY,
    owner      TEXT   NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
