-- Seed data for `--data seed`: a small catalogue and one test customer.
INSERT INTO products (sku, name, price) VALUES
    ('MUG-01', 'Enamel mug', 12.00),
    ('TEE-01', 'Logo t-shirt', 24.50),
    ('CAP-01', 'Cap', 18.00);
INSERT INTO customers (email, first_name, last_name, city) VALUES
    ('test.customer@example.com', 'Test', 'Customer', 'Springfield');
