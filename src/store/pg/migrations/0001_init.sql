-- dualsight schema 1: the store of many daemons ("nodes") over one library.
-- Paths are compared byte by byte (COLLATE "C"), as sled's keys are, so a
-- folder's files are one index range.

CREATE EXTENSION IF NOT EXISTS vector;

-- One row per daemon: the model space it serves searches from.
CREATE TABLE nodes (
    node text PRIMARY KEY,
    active_space integer,
    seen_ms bigint NOT NULL
);

-- A model's vector space. Its vectors live in the table vectors_<id>
-- (created with the space: the dimension is part of the column type, which
-- a pgvector HNSW index needs), with one HNSW index each.
CREATE TABLE spaces (
    id serial PRIMARY KEY,
    fingerprint text NOT NULL UNIQUE,
    dim integer NOT NULL CHECK (dim BETWEEN 1 AND 16000),
    created_ms bigint NOT NULL
);

-- What a node knows about one of its files. Equal paths on two nodes are two
-- rows; equal content on any nodes shares one vector per space (by hash).
CREATE TABLE files (
    node text NOT NULL,
    path text COLLATE "C" NOT NULL,
    hash bytea NOT NULL CHECK (length(hash) = 32),
    size bigint NOT NULL,
    mtime_ns bigint NOT NULL,
    indexed_at_ms bigint NOT NULL,
    taken_at bigint NOT NULL,
    taken_from smallint NOT NULL,
    width integer NOT NULL,
    height integer NOT NULL,
    PRIMARY KEY (node, path)
);
CREATE INDEX files_hash ON files (hash);

CREATE TABLE failures (
    node text NOT NULL,
    path text COLLATE "C" NOT NULL,
    error text NOT NULL,
    size bigint NOT NULL,
    mtime_ns bigint NOT NULL,
    attempts integer NOT NULL,
    last_failed_ms bigint NOT NULL,
    PRIMARY KEY (node, path)
);

CREATE TABLE roots (
    node text NOT NULL,
    root text COLLATE "C" NOT NULL,
    offline boolean NOT NULL,
    PRIMARY KEY (node, root)
);
