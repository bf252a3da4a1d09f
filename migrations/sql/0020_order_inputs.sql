-- Everything placing an order reads before it computes the award, in one round trip
-- (service/db/orders.py, order_inputs; it was eight statements): the shop and the
-- program's ledger and return settings; the customer's pending account, locked, so that
-- the customer's orders and refunds take turns; the earning rules in force at the order;
-- the bonus each capped campaign has given the customer (kept after refunds); the tier
-- ladder, the customer's tier row (locked) and the tier grants in force; the customer's
-- pending referral (locked) and the referral settings.
--
-- The locks come first and in the order the statements used to take them (pending
-- account, the ladder's advisory lock (shared), tier row or customer, referral), and every
-- later read is its own statement: in a VOLATILE function each takes a fresh snapshot, so
-- what a lock holder committed before releasing the lock is seen (one statement would read everything in the snapshot of its
-- start, before the wait). A missing shop or customer, or no rules in force, ends the
-- function early with the columns read so far (the caller names what is missing).
--
-- Only plain columns come back, no row types (a later ALTER TABLE would change their shape
-- under the driver's cached description of them): of the customer's tier row its five
-- columns, of the grants in force their tier codes, of the pending referral its id.
CREATE FUNCTION order_inputs(
    p_program_id text, p_shop_id text, p_customer_id text, p_pending_code text,
    p_placed_at timestamptz, p_now timestamptz
) RETURNS TABLE (
    shop_name text, time_zone text, expiry_policy text, expiry_period integer,
    return_window_days integer, return_policy text,
    customer_found boolean,
    rules jsonb, rules_published_by text, rules_published_at timestamptz,
    campaign_bonus jsonb,
    tier_config jsonb, tier_earned_code text, tier_effective_code text, tier_since timestamptz,
    tier_review_at timestamptz, tier_grace_ends_at timestamptz, tier_grant_codes text[],
    referral_id text, referral_settings jsonb
)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    SELECT s.name, p.time_zone, p.expiry_policy, p.expiry_period, p.return_window_days, p.return_policy
      INTO shop_name, time_zone, expiry_policy, expiry_period, return_window_days, return_policy
      FROM programs p JOIN shops s ON s.program_id = p.id AND s.id = p_shop_id
     WHERE p.id = p_program_id;
    IF NOT FOUND THEN
        RETURN NEXT;
        RETURN;
    END IF;

    PERFORM FROM accounts a WHERE a.program_id = p_program_id AND a.code = p_pending_code FOR NO KEY UPDATE;
    customer_found := FOUND;
    IF NOT customer_found THEN
        RETURN NEXT;
        RETURN;
    END IF;

    SELECT r.rules, r.published_by, r.published_at INTO rules, rules_published_by, rules_published_at
      FROM earning_rule_sets r
     WHERE r.program_id = p_program_id AND r.effective_from <= p_placed_at
     ORDER BY r.effective_from DESC, r.version DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN NEXT;
        RETURN;
    END IF;

    -- bonus_kept (service/domain/earning.py) of each order's bonus, in numeric:
    -- bonus * refunded_net may not fit a bigint
    IF jsonb_path_exists(rules, '$.campaigns[*] ? (@.customer_cap != null)') THEN
        SELECT coalesce(jsonb_object_agg(kept.campaign, kept.points), '{}') INTO campaign_bonus
          FROM (SELECT b.key AS campaign,
                       sum(CASE WHEN o.refunded_net = 0 THEN b.value::bigint
                                WHEN o.refunded_net >= o.net THEN 0
                                ELSE b.value::bigint - div(b.value::numeric * o.refunded_net, o.net) END)::bigint
                         AS points
                  FROM orders o CROSS JOIN LATERAL jsonb_each_text(o.award -> 'campaign_bonus') AS b
                 WHERE o.program_id = p_program_id AND o.customer_id = p_customer_id
                 GROUP BY b.key) AS kept;
    END IF;

    -- the ladder is read under the shared side of the lock tiers.configure holds while it
    -- changes it: an order never measures against a ladder replaced under it (and so never
    -- puts a customer back in a removed level), and a change waits for the orders reading
    -- the old ladder, so it sees the tier rows they write
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('tier-config:' || p_program_id, 0));
    SELECT c.config INTO tier_config FROM tier_configs c WHERE c.program_id = p_program_id;
    IF tier_config IS NOT NULL THEN
        SELECT t.earned_code, t.effective_code, t.since, t.review_at, t.grace_ends_at
          INTO tier_earned_code, tier_effective_code, tier_since, tier_review_at, tier_grace_ends_at
          FROM customer_tiers t
         WHERE t.program_id = p_program_id AND t.customer_id = p_customer_id FOR UPDATE;
        IF NOT FOUND THEN
            -- a customer's first tier row: lock the customer so two first orders take turns
            PERFORM FROM customers c WHERE c.program_id = p_program_id AND c.id = p_customer_id FOR NO KEY UPDATE;
            SELECT t.earned_code, t.effective_code, t.since, t.review_at, t.grace_ends_at
              INTO tier_earned_code, tier_effective_code, tier_since, tier_review_at, tier_grace_ends_at
              FROM customer_tiers t
             WHERE t.program_id = p_program_id AND t.customer_id = p_customer_id FOR UPDATE;
        END IF;
        -- the grants not ended at p_now, whenever they started: a grant starts when it is
        -- made, so one starting after p_now was made, and committed, while this order
        -- waited for the customer's rows, and is in force by the time the order settles
        -- the tier (counting only those started by p_now took it away again)
        SELECT coalesce(array_agg(g.tier_code ORDER BY g.ends_at DESC), '{}') INTO tier_grant_codes
          FROM tier_grants g
         WHERE g.program_id = p_program_id AND g.customer_id = p_customer_id AND g.ends_at > p_now;
    END IF;

    SELECT r.id INTO referral_id FROM referrals r
     WHERE r.program_id = p_program_id AND r.referee_id = p_customer_id AND r.status = 'pending' FOR UPDATE;
    IF FOUND THEN
        SELECT s.settings INTO referral_settings FROM referral_settings s WHERE s.program_id = p_program_id;
    END IF;
    RETURN NEXT;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT EXECUTE ON FUNCTION order_inputs(text, text, text, text, timestamptz, timestamptz) TO loyalty_app;
    END IF;
END
$$;
