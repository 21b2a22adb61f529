-- The Merkle tree over the log (RFC 6962): the hash of every complete subtree, written in the
-- transaction of the append that completes it, so tree heads and proofs read O(log n) rows.
-- Level 0 holds the leaf hashes. Append-only like the records.
CREATE TABLE transfer.tree_nodes (
    level smallint NOT NULL CHECK (level BETWEEN 0 AND 62),
    index bigint   NOT NULL CHECK (index >= 0),
    hash  bytea    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, index)
);

-- Signed checkpoints, one per tree size, written by the single checkpoint writer.
CREATE TABLE transfer.checkpoints (
    tree_size  bigint      PRIMARY KEY CHECK (tree_size >= 0),
    root_hash  bytea       NOT NULL CHECK (length(root_hash) = 32),
    time       timestamptz NOT NULL,
    key_id     text        NOT NULL,
    signature  bytea       NOT NULL CHECK (length(signature) = 64),
    origin     text        NOT NULL
);

GRANT SELECT, INSERT ON transfer.tree_nodes TO transfer_app;
GRANT SELECT, INSERT ON transfer.checkpoints TO transfer_app;
