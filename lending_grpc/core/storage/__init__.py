"""Storage: the database (SQLite or PostgreSQL), its models, migrations and prepared statements."""
