"""Storage backends behind small interfaces: base.Storage for objects, resumable.ResumableStore
for tus uploads; local/ and s3/ each offer build(config) -> backend.Backend."""
