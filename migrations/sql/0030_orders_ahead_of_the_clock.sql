-- Publishing an earning rules version (service/usecases/earning_rules.py) refuses an
-- `effective_from` at or before an order already placed ahead of the service's clock (a
-- till may run up to 5 minutes ahead): that order earned under the version in force when
-- it arrived, and a version starting before its `placed_at` would change its rules. Only
-- such orders can be at or after a version's `effective_from` (never in the past), so the
-- index holds only them: nothing for the orders of a till whose clock is right.
CREATE INDEX orders_ahead_of_the_clock ON orders (program_id, placed_at) WHERE placed_at > created_at;
