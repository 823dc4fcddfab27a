"""The ClientApp shell: `flwr run .` and every SuperNode load `app`; the Hydra door builds one with
`make_client_app`. Bad input becomes an error reply of one line, never a traceback."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from client_app.identity import identify_reply
from client_app.merchant import curvature_reply, evaluate_reply, refit_reply, setup_reply, train_reply
from client_app.secure_aggregation import is_secure_round, secure_aggregation_mod, secure_train_reply
from core import protocol
from core.config import config_from_run_config
from core.errors import InputError


def _manifest_from_run_config(context: Context) -> str | None:
    return str(context.run_config.get(protocol.PARTITIONS, "") or "") or None


def make_client_app(config_of: Callable[[Context], dict],
                    manifest_of: Callable[[Context], str | None] = _manifest_from_run_config,
                    mods: Sequence[Callable] = ()) -> ClientApp:
    """`manifest_of` says where a simulated node finds its partition's file (None: partition here);
    `mods` are Flower mods wrapped around every handler (tests inject faulty clients this way)."""
    app = ClientApp(mods=list(mods))

    def answer(reply_fn, msg: Message, context: Context, *kept) -> Message:
        cfg = config_of(context)
        torch.set_num_threads(max(1, int(cfg["federation"]["client_cpus"])))
        try:
            return reply_fn(msg, context.node_config, manifest_of(context), cfg, *kept)
        except InputError as exc:
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(exc)), reply_to=msg)

    @app.query(protocol.IDENTIFY)  # who this node is: its merchant id only (server_app/setup.py)
    def identify(msg: Message, context: Context) -> Message:
        return answer(identify_reply, msg, context)

    @app.query(protocol.CURVATURE)  # its train rows' sums at the averaged model (train.embedding_newton)
    def curvature(msg: Message, context: Context) -> Message:
        return answer(curvature_reply, msg, context)

    @app.query(protocol.REFIT)  # its train and validation rows' bias or embedding sums at the finished model
    def refit(msg: Message, context: Context) -> Message:
        return answer(refit_reply, msg, context)

    @app.query()  # its data's aggregates, when a round first addresses it
    def setup(msg: Message, context: Context) -> Message:
        return answer(setup_reply, msg, context)

    @app.train(mods=[secure_aggregation_mod])  # passes every message but a SecAgg+ round's (privacy=secagg)
    def train(msg: Message, context: Context) -> Message:
        return answer(secure_train_reply if is_secure_round(msg) else train_reply, msg, context, context.state)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return answer(evaluate_reply, msg, context)

    return app


app = make_client_app(lambda context: config_from_run_config(context.run_config))
