-- `GET /v1/finance/entries/{id}` lists the lots an entry created (service/usecases/finance.py,
-- LOTS_CREATED). No index of lots led with the entry: `lots_pkey` is (program_id, id) and
-- `lots_open` holds only lots with points left, so each look-up read every lot the program
-- ever made. One more index entry per lot written is the price.
CREATE INDEX lots_entry ON lots (program_id, entry_id);
