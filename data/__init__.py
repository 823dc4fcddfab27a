"""Interactions tables: schema and validation, the synthetic platform, loading, splits, merchant shards."""
