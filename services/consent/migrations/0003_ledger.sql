-- The consent ledger (Art. 5): append-only. The app role may read and append, never update or
-- delete. Each row keeps the signed bytes of its ConsentRecord, which is what is served.
CREATE TABLE consent.ledger (
    sequence         bigint      PRIMARY KEY,
    id               uuid        NOT NULL UNIQUE,
    subject          text        NOT NULL,
    action           text        NOT NULL CHECK (action IN ('given', 'withdrawn')),
    basis            text        NOT NULL,
    terms_version    bigint      NOT NULL,
    recipient_entity text        NOT NULL,
    record_time      timestamptz NOT NULL,
    payload          bytea       NOT NULL,
    signature        bytea       NOT NULL,
    key_id           text        NOT NULL
);
CREATE SEQUENCE consent.ledger_sequence OWNED BY consent.ledger.sequence;
CREATE INDEX ledger_by_subject ON consent.ledger (subject, sequence);

-- Deemed consent is recorded once per subject and terms version (Art. 5.1, 7): a second
-- sign-in under the same version adds nothing, guaranteed here and not only in code.
CREATE UNIQUE INDEX ledger_deemed_once ON consent.ledger (subject, terms_version)
    WHERE action = 'given' AND basis = 'deemed_by_use';

GRANT SELECT, INSERT ON consent.ledger TO consent_app;
GRANT USAGE ON SEQUENCE consent.ledger_sequence TO consent_app;

-- Each subject's current consent, maintained in the transaction of every ledger entry, so a
-- decision reads one row by key and never scans the ledger.
CREATE TABLE consent.subject_state (
    subject                 text        PRIMARY KEY,
    tenant                  text        NOT NULL,
    active                  boolean     NOT NULL DEFAULT false,
    consented_terms_version bigint      NOT NULL DEFAULT 0,
    basis_record            uuid,
    withdrawn               boolean     NOT NULL DEFAULT false,
    withdraw_time           timestamptz,
    last_sequence           bigint      NOT NULL DEFAULT 0
);

-- Explicit third-party consents in force (Art. 4), one row per subject and recipient.
CREATE TABLE consent.explicit_consents (
    subject          text        NOT NULL,
    recipient_entity text        NOT NULL,
    record           uuid        NOT NULL,
    record_time      timestamptz NOT NULL,
    PRIMARY KEY (subject, recipient_entity)
);

GRANT SELECT, INSERT, UPDATE ON consent.subject_state TO consent_app;
GRANT SELECT, INSERT, DELETE ON consent.explicit_consents TO consent_app;
