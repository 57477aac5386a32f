-- Newer than production: environments get it on top of the snapshot.
ALTER TABLE customers ADD COLUMN marketing_opt_in boolean NOT NULL DEFAULT false;
CREATE INDEX orders_placed_at_idx ON orders (placed_at);
