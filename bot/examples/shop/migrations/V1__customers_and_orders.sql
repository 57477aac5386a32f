-- The shop's first schema: customers, products, orders and their lines.
CREATE TABLE customers (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    first_name  text NOT NULL,
    last_name   text NOT NULL,
    phone       text,
    street      text,
    city        text,
    birthday    date,
    created_at  timestamptz NOT NULL DEFAULT now(),
    favourite_order_id bigint
);

CREATE TABLE products (
    id     bigserial PRIMARY KEY,
    sku    text NOT NULL UNIQUE,
    name   text NOT NULL,
    price  numeric(10, 2) NOT NULL CHECK (price >= 0)
);

CREATE TABLE orders (
    id               bigserial PRIMARY KEY,
    customer_id      bigint NOT NULL REFERENCES customers (id),
    placed_at        timestamptz NOT NULL,
    status           text NOT NULL CHECK (status IN ('new', 'paid', 'shipped', 'cancelled')),
    total            numeric(12, 2) NOT NULL CHECK (total >= 0),
    shipping_address text,
    note             text
);

-- A cycle: a customer's favourite order belongs to some customer.
ALTER TABLE customers
    ADD CONSTRAINT customers_favourite_order_fk FOREIGN KEY (favourite_order_id) REFERENCES orders (id);

CREATE TABLE order_items (
    order_id    bigint NOT NULL REFERENCES orders (id),
    line        integer NOT NULL,
    product_id  bigint NOT NULL REFERENCES products (id),
    quantity    integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, line)
);
