-- Published versions of the terms and the privacy policy (Art. 6, 7). Immutable once published:
-- the app role may read and insert, never update or delete.
CREATE TABLE consent.documents (
    kind            text        NOT NULL CHECK (kind IN ('terms', 'privacy-policy')),
    version         bigint      NOT NULL CHECK (version > 0),
    label           text        NOT NULL,
    uri             text        NOT NULL,
    content_sha256  text        NOT NULL CHECK (content_sha256 ~ '^[0-9a-f]{64}$'),
    announce_time   timestamptz NOT NULL,
    effective_time  timestamptz NOT NULL,
    change_summary  text        NOT NULL,
    material_change boolean     NOT NULL,
    publish_time    timestamptz NOT NULL,
    published_by    text        NOT NULL,
    PRIMARY KEY (kind, version),
    CHECK (announce_time <= effective_time)
);

-- "Which version is in force at T" reads one row through this index.
CREATE INDEX documents_in_force ON consent.documents (kind, effective_time DESC);

GRANT SELECT, INSERT ON consent.documents TO consent_app;
