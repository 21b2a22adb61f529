-- Runs as transfer_owner, which owns the `transfer` schema. The app role the service runs as may
-- use the schema; each later migration grants it exactly the table access it needs, so it
-- can never run DDL here nor reach another service's schema.
GRANT USAGE ON SCHEMA transfer TO transfer_app;
