"""The ServerApp: multi-task FedAvg strategy, orchestration of every mode, and run outputs."""
