"""Resumable (tus) uploads kept in an S3 bucket; S3ResumableStore composes the parts."""
