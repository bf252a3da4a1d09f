-- Tenancy, access and customers. Every tenant table carries program_id and every
-- primary key and unique constraint includes it (ready for distribution by program_id).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        CREATE ROLE loyalty_app NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot create role loyalty_app; the app will run as the connecting user';
END
$$;

CREATE TABLE programs (
    id                 text PRIMARY KEY,
    name               text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    time_zone          text NOT NULL,
    currency           text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    point_value_minor  integer NOT NULL CHECK (point_value_minor > 0),
    token_secret       bytea NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE shops (
    program_id  text NOT NULL REFERENCES programs (id) ON DELETE RESTRICT,
    id          text NOT NULL,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (program_id, id)
);

CREATE TABLE api_keys (
    program_id   text NOT NULL REFERENCES programs (id) ON DELETE RESTRICT,
    id           text NOT NULL,
    name         text NOT NULL,
    scope        text NOT NULL CHECK (scope IN ('checkout', 'admin', 'finance')),
    shop_id      text,
    secret_hash  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    revoked_at   timestamptz,
    PRIMARY KEY (program_id, id),
    FOREIGN KEY (program_id, shop_id) REFERENCES shops (program_id, id) ON DELETE RESTRICT
);

CREATE TABLE customers (
    program_id   text NOT NULL REFERENCES programs (id) ON DELETE RESTRICT,
    id           text NOT NULL,
    external_id  text NOT NULL CHECK (length(external_id) BETWEEN 1 AND 200),
    shop_id      text,
    email        text,
    name         text,
    attributes   jsonb NOT NULL DEFAULT '{}'::jsonb,
    enrolled_at  timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (program_id, id),
    UNIQUE (program_id, external_id),
    FOREIGN KEY (program_id, shop_id) REFERENCES shops (program_id, id) ON DELETE RESTRICT
);
CREATE INDEX customers_enrolled ON customers (program_id, enrolled_at, id);

-- One row per idempotency key: the request's fingerprint and, once finished, the
-- response it produced (successes and refusals alike), so a retry replays it.
CREATE TABLE idempotency_keys (
    program_id    text NOT NULL REFERENCES programs (id) ON DELETE RESTRICT,
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint   bytea NOT NULL,
    status_code   integer NOT NULL,
    response      bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (program_id, key)
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT USAGE ON SCHEMA public TO loyalty_app;
        GRANT SELECT, INSERT, UPDATE ON programs, shops, api_keys, customers TO loyalty_app;
        GRANT SELECT, INSERT ON idempotency_keys TO loyalty_app;
    END IF;
END
$$;
