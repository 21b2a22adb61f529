-- Each entry also keeps its ISO/IEC TS 27560 receipt and that receipt's signature.
ALTER TABLE consent.ledger ADD COLUMN iso27560 bytea NOT NULL DEFAULT '';
ALTER TABLE consent.ledger ADD COLUMN iso27560_signature bytea NOT NULL DEFAULT '';
