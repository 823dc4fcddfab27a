"""The Hydra door: the `merchant-fl` command, the one place that wires ServerApp and ClientApp together."""
