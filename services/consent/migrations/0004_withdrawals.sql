-- Withdrawals (Art. 4, 5.3). A full withdrawal names its ledger entry in the subject's state;
-- a withdrawn explicit consent keeps its row, marked with the withdrawal entry, so a decision
-- can say "withdrawn" rather than "never given".
ALTER TABLE consent.subject_state ADD COLUMN withdraw_record uuid;
ALTER TABLE consent.explicit_consents ADD COLUMN terms_version bigint NOT NULL DEFAULT 0;
ALTER TABLE consent.explicit_consents ADD COLUMN withdrawal_record uuid;
GRANT UPDATE ON consent.explicit_consents TO consent_app;
