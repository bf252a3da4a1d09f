-- What of a refund's redeemed points given back paid off the customer's debt (`owed`)
-- rather than becoming available (service/usecases/orders.py: the return settles a debt
-- first, as a release does). Refunds made before settled nothing, so the constant default
-- is their truth; adding the column rewrites and updates no row (the check reads them once).
ALTER TABLE refunds
    ADD COLUMN return_settled bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT refunds_return_settled_within CHECK (return_settled >= 0 AND return_settled <= points_returned);
