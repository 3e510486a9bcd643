"""Compare-and-swap for everything shared between processes: batch documents, the catalog lease,
item claims, outbox manifests, worker registrations, and (with Redis) each domain's call slots."""
