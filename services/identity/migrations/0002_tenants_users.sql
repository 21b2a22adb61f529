-- Tenants and Portal Users (Art. 2). A user's PI never appears here in clear: `pi` is the
-- AES-256-GCM ciphertext of the three PI fields under the user's own data key, `data_key` is
-- that key wrapped by a key-encryption key from configuration (`kek_id`), and `email_hash` is a
-- keyed hash for lookups. Deletion (Art. 5.3) sets all of them to NULL: with the data key gone,
-- any copy of the ciphertext (WAL, replicas, backups until they expire) is unreadable.

CREATE TABLE identity.tenants (
    id                 uuid        PRIMARY KEY,
    display_name       text        NOT NULL,
    contract_reference text        NOT NULL UNIQUE,
    home_region        text        NOT NULL,
    create_time        timestamptz NOT NULL,
    update_time        timestamptz NOT NULL,
    revision           bigint      NOT NULL DEFAULT 1
);

CREATE TABLE identity.users (
    id                     uuid        PRIMARY KEY,
    tenant_id              uuid        NOT NULL REFERENCES identity.tenants (id),
    -- REGISTERING: created, consent not yet recorded; invisible and unusable until the
    -- registration completes (a retry with the same request_id completes it).
    state                  text        NOT NULL
        CHECK (state IN ('REGISTERING', 'PENDING_ACTIVATION', 'ACTIVE', 'DELETED')),
    channel                text        NOT NULL CHECK (channel IN ('SELF', 'CONTRACT_PARTY')),
    roles                  text[]      NOT NULL,
    pi                     bytea,
    data_key               bytea,
    kek_id                 text,
    email_hash             bytea       UNIQUE,
    password_hash          text,
    activation_secret_hash bytea       UNIQUE,
    activation_nonce       bytea,
    activation_expire_time timestamptz,
    attested_by            text,
    attest_time            timestamptz,
    evidence_uri           text,
    -- Who registered the user with which request_id, and a keyed hash of that request: a
    -- retry is recognised (and a reused request_id refused) without storing the request.
    registration_key       text        NOT NULL UNIQUE,
    registration_hash      bytea       NOT NULL,
    consent_record         text,
    deletion_receipt       bytea,
    create_time            timestamptz NOT NULL,
    update_time            timestamptz NOT NULL,
    delete_time            timestamptz,
    revision               bigint      NOT NULL DEFAULT 1,
    CHECK (state = 'DELETED' OR (pi IS NOT NULL AND data_key IS NOT NULL AND email_hash IS NOT NULL)),
    CHECK (state <> 'DELETED' OR (pi IS NULL AND data_key IS NULL AND email_hash IS NULL
        AND password_hash IS NULL AND activation_secret_hash IS NULL))
);
CREATE INDEX users_by_tenant ON identity.users (tenant_id, create_time, id);
CREATE INDEX users_registering ON identity.users (create_time) WHERE state = 'REGISTERING';

-- Failed sign-ins per email hash (known or not: an unknown email is throttled the same way,
-- so the answer does not tell whether an account exists).
CREATE TABLE identity.sign_in_failures (
    email_hash   bytea       PRIMARY KEY,
    failures     integer     NOT NULL,
    locked_until timestamptz,
    last_failure timestamptz NOT NULL
);

GRANT SELECT, INSERT, UPDATE ON identity.tenants TO identity_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON identity.users TO identity_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON identity.sign_in_failures TO identity_app;
