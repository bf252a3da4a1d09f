-- An order may name the hold whose captured points (or store credit) paid for it; a refund
-- of the order gives back its share of them (service/usecases/orders.py).
--
-- `redemption_hold_id` is the hold (of the same program: the key leads with program_id), at
-- most one order per hold (the unique key; NULLs, orders paid otherwise, do not collide),
-- `redemption_unit` its unit, `points_redeemed` what its capture spent (a hold is resolved
-- once, so this never changes) and `points_returned` what the order's refunds gave back so
-- far, never more than was redeemed.
ALTER TABLE orders
    ADD COLUMN redemption_hold_id text,
    ADD COLUMN redemption_unit text CHECK (redemption_unit IN ('POINTS', 'CREDIT')),
    ADD COLUMN points_redeemed bigint NOT NULL DEFAULT 0 CHECK (points_redeemed >= 0),
    ADD COLUMN points_returned bigint NOT NULL DEFAULT 0
        CHECK (points_returned >= 0 AND points_returned <= points_redeemed),
    ADD CONSTRAINT orders_redemption_described
        CHECK ((redemption_hold_id IS NULL) = (redemption_unit IS NULL)
               AND (redemption_hold_id IS NOT NULL OR points_redeemed = 0)),
    ADD CONSTRAINT orders_redemption_hold_key UNIQUE (program_id, redemption_hold_id),
    ADD CONSTRAINT orders_redemption_hold_fkey
        FOREIGN KEY (program_id, redemption_hold_id) REFERENCES holds (program_id, id) ON DELETE RESTRICT;

-- A refund's share of the redeemed points, and the entry that gave it back (its own entry,
-- `order.redemption_return`, beside the clawback's `order.refund`). The rows are append-only;
-- adding columns with a constant default rewrites and updates no row.
ALTER TABLE refunds
    ADD COLUMN points_returned bigint NOT NULL DEFAULT 0 CHECK (points_returned >= 0),
    ADD COLUMN return_entry_id bigint,
    ADD CONSTRAINT refunds_return_entry_fkey
        FOREIGN KEY (program_id, return_entry_id) REFERENCES entries (program_id, id) ON DELETE RESTRICT,
    ADD CONSTRAINT refunds_return_described CHECK ((points_returned = 0) = (return_entry_id IS NULL));
