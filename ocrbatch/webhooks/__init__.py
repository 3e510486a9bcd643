"""Webhooks: finished items in chunks, a durable outbox, signed deliveries."""
