"""HTTP handlers: thin translations between requests and the storage interface."""
