"""The work behind an environment: infrastructure, code and data phases, and the runner that
orders them. Depends on `bot`'s core modules only; never on `handlers`."""
