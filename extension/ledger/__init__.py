"""The ledger: recorded custom migrations in directus_migrations and the scripts behind them."""
