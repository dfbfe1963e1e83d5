"""Bytes below aiohttp: splice, the client's socket, bodies and hashing, the buffer budget, cleanups."""
