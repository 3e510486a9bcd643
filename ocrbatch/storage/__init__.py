"""Object storage: one async interface over S3-compatible buckets and local directories, and the
leases and item claims built on its conditional writes."""
