"""The worker: discovery, reading ahead, the per-domain limiter, calls, results and failure records."""
