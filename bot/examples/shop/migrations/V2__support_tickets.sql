-- Support tickets: free text written by customers and agents.
CREATE TABLE support_tickets (
    id           bigserial PRIMARY KEY,
    customer_id  bigint REFERENCES customers (id),
    opened_at    timestamptz NOT NULL,
    subject      text NOT NULL,
    body         text NOT NULL,
    meta         jsonb
);
CREATE INDEX support_tickets_customer_idx ON support_tickets (customer_id);
