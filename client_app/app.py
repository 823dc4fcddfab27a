"""The ClientApp shell: `flwr run .` loads `app`; the Hydra door builds one with `make_client_app`."""

from __future__ import annotations

from typing import Callable

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client_app.merchant import evaluate_reply, train_reply
from core.config import config_from_run_config


def make_client_app(config_of: Callable[[Context], dict]) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = config_of(context)
        torch.set_num_threads(max(1, int(cfg["federation"]["client_cpus"])))
        return train_reply(msg, context.node_config, cfg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg = config_of(context)
        torch.set_num_threads(max(1, int(cfg["federation"]["client_cpus"])))
        return evaluate_reply(msg, context.node_config, cfg)

    return app


app = make_client_app(lambda context: config_from_run_config(context.run_config))
