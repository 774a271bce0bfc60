"""The gateway's shared state (API keys, quota reservations) in SQLite or PostgreSQL."""
