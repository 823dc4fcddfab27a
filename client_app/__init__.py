"""The ClientApp: one merchant trains and evaluates the shared model on its own shard only."""
