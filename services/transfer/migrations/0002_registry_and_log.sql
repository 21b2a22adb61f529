-- The registry of entities (Art. 3, 4) and the transfer log: every decision, allowed or
-- denied, as an append-only record with its Merkle leaf hash. No PI: subjects by name only.

CREATE TABLE transfer.entities (
    id               uuid        PRIMARY KEY,
    kind             text        NOT NULL
        CHECK (kind IN ('OPERATOR', 'BRANCH', 'AFFILIATE', 'SUBCONTRACTOR', 'THIRD_PARTY')),
    legal_name       text        NOT NULL,
    country_code     text        NOT NULL CHECK (country_code ~ '^[A-Z]{2}$'),
    region           text        NOT NULL,
    security_level   integer     NOT NULL DEFAULT 0 CHECK (security_level BETWEEN 0 AND 100),
    last_review_time timestamptz,
    create_time      timestamptz NOT NULL,
    update_time      timestamptz NOT NULL,
    revision         bigint      NOT NULL DEFAULT 1
);
CREATE INDEX entities_in_order ON transfer.entities (create_time, id);

-- The log. `sequence` is the 0-based Merkle leaf index, dense and in commit order: appends take
-- the next number from `log_head` under its row lock. `leaf_data` is the canonical encoding
-- of the TransferRecord without its leaf hash; `leaf_hash` = SHA-256(0x00 || leaf_data).
CREATE TABLE transfer.records (
    sequence           bigint      PRIMARY KEY CHECK (sequence >= 0),
    id                 uuid        NOT NULL UNIQUE,
    subject            text        NOT NULL,
    decision           text        NOT NULL CHECK (decision IN ('ALLOWED', 'DENIED')),
    source_entity      uuid        NOT NULL,
    destination_entity uuid        NOT NULL,
    source_region      text        NOT NULL,
    destination_region text        NOT NULL,
    source_country     text        NOT NULL,
    destination_country text       NOT NULL,
    data_categories    integer[]   NOT NULL,
    record_time        timestamptz NOT NULL,
    leaf_data          bytea       NOT NULL,
    leaf_hash          bytea       NOT NULL CHECK (length(leaf_hash) = 32)
);
CREATE INDEX records_by_subject ON transfer.records (subject, sequence);
CREATE INDEX records_by_destination ON transfer.records (destination_entity, sequence);
CREATE INDEX records_by_source ON transfer.records (source_entity, sequence);
CREATE INDEX records_by_time ON transfer.records (record_time, sequence);
CREATE INDEX records_by_source_country ON transfer.records (source_country, sequence);
CREATE INDEX records_by_destination_country ON transfer.records (destination_country, sequence);

CREATE TABLE transfer.log_head (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    size     bigint  NOT NULL
);
INSERT INTO transfer.log_head (size) VALUES (0);

-- Subjects identity reported DELETED (Art. 5.3): every later transfer of theirs is refused.
CREATE TABLE transfer.deleted_subjects (
    subject     text        PRIMARY KEY,
    delete_time timestamptz NOT NULL
);

GRANT SELECT, INSERT, UPDATE ON transfer.entities TO transfer_app;
-- Append-only: the app role can neither change nor remove a record.
GRANT SELECT, INSERT ON transfer.records TO transfer_app;
GRANT SELECT, UPDATE ON transfer.log_head TO transfer_app;
GRANT SELECT, INSERT ON transfer.deleted_subjects TO transfer_app;
