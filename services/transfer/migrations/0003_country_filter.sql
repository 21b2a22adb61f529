-- Records are also found by country (either side), like by region.
ALTER TABLE transfer.records ADD COLUMN source_country text NOT NULL DEFAULT '';
CREATE INDEX records_by_destination_country ON transfer.records (destination_country, sequence);
CREATE INDEX records_by_source_country ON transfer.records (source_country, sequence);
