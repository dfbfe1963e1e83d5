"""A durable job queue kept in the storage backend (base.py), and the loop that runs it."""
