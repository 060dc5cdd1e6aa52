"""Alembic migrations of the loradex schema, shipped as a package so they run from any cwd."""
