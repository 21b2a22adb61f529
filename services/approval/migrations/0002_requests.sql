-- Approval requests between tenants, their history, the connections accepted requests create,
-- and the users identity reported deleted. No PI: tenants and users appear by id; the only free
-- text is what users typed (message, reasons).

CREATE TABLE approval.requests (
    id                           uuid        PRIMARY KEY,
    kind                         text        NOT NULL CHECK (kind IN ('TENANT_CONNECTION')),
    requester_tenant             uuid        NOT NULL,
    requester_user               uuid        NOT NULL,
    target_tenant                uuid        NOT NULL,
    message                      text        NOT NULL,
    -- Both tenants as identity knew them when the request was sent (anti-phishing).
    requester_display_name       text        NOT NULL,
    requester_contract_reference text        NOT NULL,
    target_display_name          text        NOT NULL,
    target_contract_reference    text        NOT NULL,
    -- As recorded; a PENDING request past expire_time is EXPIRED whether or not the sweeper has
    -- recorded it yet (every read applies the rule).
    state                        text        NOT NULL
        CHECK (state IN ('PENDING', 'ACCEPTED', 'REJECTED', 'WITHDRAWN', 'EXPIRED')),
    create_time                  timestamptz NOT NULL,
    update_time                  timestamptz NOT NULL,
    expire_time                  timestamptz NOT NULL,
    decide_time                  timestamptz,
    decided_by                   text        NOT NULL DEFAULT '',
    decision_reason              text        NOT NULL DEFAULT '',
    tenant_connection            uuid,
    revision                     bigint      NOT NULL DEFAULT 1,
    CHECK (requester_tenant <> target_tenant),
    CHECK ((state = 'PENDING') = (decide_time IS NULL))
);
-- At most one PENDING request of a kind between two tenants, in either direction.
CREATE UNIQUE INDEX requests_one_pending ON approval.requests
    (kind, least(requester_tenant, target_tenant), greatest(requester_tenant, target_tenant))
    WHERE state = 'PENDING';
CREATE INDEX requests_sent ON approval.requests (requester_tenant, create_time DESC, id DESC);
CREATE INDEX requests_received ON approval.requests (target_tenant, create_time DESC, id DESC);
CREATE INDEX requests_expiring ON approval.requests (expire_time) WHERE state = 'PENDING';
CREATE INDEX requests_pending_by_user ON approval.requests (requester_user) WHERE state = 'PENDING';

-- Every transition, append-only: the creation (from_state NULL) and at most one decision.
CREATE TABLE approval.transitions (
    request    uuid        NOT NULL REFERENCES approval.requests (id),
    position   integer     NOT NULL CHECK (position IN (0, 1)),
    from_state text,
    to_state   text        NOT NULL,
    actor      text        NOT NULL,
    time       timestamptz NOT NULL,
    reason     text        NOT NULL DEFAULT '',
    PRIMARY KEY (request, position)
);

CREATE TABLE approval.connections (
    id               uuid        PRIMARY KEY,
    -- The two tenants, tenant_a < tenant_b.
    tenant_a         uuid        NOT NULL,
    tenant_b         uuid        NOT NULL,
    approval_request uuid        NOT NULL UNIQUE REFERENCES approval.requests (id),
    state            text        NOT NULL CHECK (state IN ('ACTIVE', 'DELETED')),
    create_time      timestamptz NOT NULL,
    delete_time      timestamptz,
    deleted_by       text        NOT NULL DEFAULT '',
    revision         bigint      NOT NULL DEFAULT 1,
    CHECK (tenant_a < tenant_b)
);
CREATE UNIQUE INDEX connections_one_active ON approval.connections (tenant_a, tenant_b)
    WHERE state = 'ACTIVE';
CREATE INDEX connections_a ON approval.connections (tenant_a, create_time DESC, id DESC);
CREATE INDEX connections_b ON approval.connections (tenant_b, create_time DESC, id DESC);

-- Users identity reported DELETED (Art. 5.3): their tokens are refused here at once.
CREATE TABLE approval.deleted_users (
    user_name   text        PRIMARY KEY,
    delete_time timestamptz NOT NULL
);

GRANT SELECT, INSERT, UPDATE ON approval.requests TO approval_app;
GRANT SELECT, INSERT ON approval.transitions TO approval_app;
GRANT SELECT, INSERT, UPDATE ON approval.connections TO approval_app;
GRANT SELECT, INSERT ON approval.deleted_users TO approval_app;
