-- Rotating an endpoint's signing secret keeps the secret it replaces valid until
-- `previous_secret_until`: until then deliveries are signed with both, so a receiver can
-- switch at any time. Only one previous secret is kept; both columns are set or neither.
ALTER TABLE webhook_endpoints
    ADD COLUMN previous_secret text,
    ADD COLUMN previous_secret_until timestamptz,
    ADD CONSTRAINT webhook_endpoints_previous_secret
        CHECK ((previous_secret IS NULL) = (previous_secret_until IS NULL));

-- The app role's table privileges (0009) cover the new columns; granted again for clarity.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints TO loyalty_app;
    END IF;
END
$$;
