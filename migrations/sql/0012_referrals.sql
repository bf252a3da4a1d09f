-- Referrals: the program's settings, one code per customer (plus retired ones), referrals
-- from redemption to reward, the rewards paid (each a ledger entry or a tier grant), and
-- the device and payment fingerprints the fraud rules compare.

CREATE TABLE referral_settings (
    program_id  text PRIMARY KEY REFERENCES programs (id) ON DELETE RESTRICT,
    settings    jsonb NOT NULL,
    updated_by  text NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Codes are stored upper case and matched case-insensitively by upper-casing the input.
-- A customer has one current code; a vanity code retires the one before (kept so it is
-- never handed to anyone else). Redemptions lock the code's row while they decide.
CREATE TABLE referral_codes (
    program_id       text NOT NULL,
    code             text NOT NULL CHECK (code ~ '^[A-Z0-9]{4,20}$'),
    customer_id      text NOT NULL,
    vanity           boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL,
    created_by       text NOT NULL,
    disabled_at      timestamptz,
    disabled_reason  text,
    retired_at       timestamptz,
    PRIMARY KEY (program_id, code),
    FOREIGN KEY (program_id, customer_id) REFERENCES customers (program_id, id) ON DELETE RESTRICT,
    CHECK ((disabled_at IS NULL) = (disabled_reason IS NULL))
);
CREATE UNIQUE INDEX referral_codes_current ON referral_codes (program_id, customer_id) WHERE retired_at IS NULL;

-- A customer is referred at most once (whatever became of the referral).
CREATE TABLE referrals (
    program_id           text NOT NULL,
    id                   text NOT NULL,
    code                 text NOT NULL,
    referrer_id          text NOT NULL,
    referee_id           text NOT NULL,
    status               text NOT NULL CHECK (status IN ('pending', 'qualified', 'rewarded', 'cancelled')),
    redeemed_at          timestamptz NOT NULL,
    redeemed_by          text NOT NULL,
    qualified_at         timestamptz,
    shop_id              text,
    order_id             text,
    reward_due_at        timestamptz,
    rewarded_at          timestamptz,
    cancelled_at         timestamptz,
    note                 text,
    PRIMARY KEY (program_id, id),
    UNIQUE (program_id, referee_id),
    CHECK (referrer_id <> referee_id),
    CHECK ((order_id IS NULL) = (qualified_at IS NULL) AND (shop_id IS NULL) = (order_id IS NULL)),
    CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL)),
    CHECK (status <> 'rewarded' OR rewarded_at IS NOT NULL),
    FOREIGN KEY (program_id, code) REFERENCES referral_codes (program_id, code) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, referrer_id) REFERENCES customers (program_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, referee_id) REFERENCES customers (program_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, shop_id, order_id) REFERENCES orders (program_id, shop_id, id) ON DELETE RESTRICT
);
CREATE INDEX referrals_referrer ON referrals (program_id, referrer_id, redeemed_at);
CREATE INDEX referrals_order ON referrals (program_id, shop_id, order_id) WHERE order_id IS NOT NULL;
-- the reward job's queue
CREATE INDEX referrals_due ON referrals (program_id, reward_due_at) WHERE status = 'qualified';

-- Every reward paid for a referral: a ledger entry (points or credit) or a tier grant,
-- and what a clawback took back.
CREATE TABLE referral_rewards (
    program_id         text NOT NULL,
    id                 text NOT NULL,
    referral_id        text NOT NULL,
    beneficiary_id     text NOT NULL,
    role               text NOT NULL CHECK (role IN ('referrer', 'referee', 'milestone')),
    milestone          integer CHECK (milestone > 0),
    kind               text NOT NULL CHECK (kind IN ('points', 'credit', 'tier')),
    amount             bigint CHECK (amount > 0),
    tier_code          text,
    entry_id           bigint,
    tier_grant_id      text,
    note               text,
    created_at         timestamptz NOT NULL,
    clawed_back_at     timestamptz,
    clawback_entry_id  bigint,
    clawed_back        bigint NOT NULL DEFAULT 0 CHECK (clawed_back >= 0),
    forgiven           bigint NOT NULL DEFAULT 0 CHECK (forgiven >= 0),
    owed               bigint NOT NULL DEFAULT 0 CHECK (owed >= 0),
    PRIMARY KEY (program_id, id),
    CHECK ((role = 'milestone') = (milestone IS NOT NULL)),
    FOREIGN KEY (program_id, referral_id) REFERENCES referrals (program_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, beneficiary_id) REFERENCES customers (program_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, entry_id) REFERENCES entries (program_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, clawback_entry_id) REFERENCES entries (program_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, tier_grant_id) REFERENCES tier_grants (program_id, id) ON DELETE RESTRICT
);
CREATE INDEX referral_rewards_referral ON referral_rewards (program_id, referral_id);
CREATE INDEX referral_rewards_beneficiary ON referral_rewards (program_id, beneficiary_id, milestone);

-- Hashes the shop computed from a customer's device id or payment instrument.
CREATE TABLE customer_fingerprints (
    program_id   text NOT NULL,
    customer_id  text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('device', 'payment')),
    hash         text NOT NULL CHECK (length(hash) BETWEEN 1 AND 200),
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (program_id, customer_id, kind, hash),
    FOREIGN KEY (program_id, customer_id) REFERENCES customers (program_id, id) ON DELETE RESTRICT
);
CREATE INDEX customer_fingerprints_hash ON customer_fingerprints (program_id, kind, hash);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT SELECT, INSERT, UPDATE ON referral_settings, referral_codes, referrals, referral_rewards TO loyalty_app;
        GRANT SELECT, INSERT ON customer_fingerprints TO loyalty_app;
    END IF;
END
$$;
