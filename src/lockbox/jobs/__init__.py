"""Durable background jobs: enqueued in the same transaction as the change that needs them."""
