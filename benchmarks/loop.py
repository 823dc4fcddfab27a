"""The project's training loop against a bare PyTorch loop over the same tensors, model, optimizer,
batch size, batch order and number of steps; samples per second of each, in one process, one thread.

- client: `tasks.wide.train_round` as a federated client runs it in a training round (the deep
  part's epochs, then the first-order statistics it sends), on one merchant's train split;
- train_epochs: the epochs alone (the loop shared by every mode);
- centralized: `train_round` over every merchant's train split pooled, as mode=centralized runs it;
- bare: `for batch: loss = sum of the tasks' masked losses; zero_grad; backward; step`;
- bare + L2: the same, with the run's embedding prior (train.embedding_l2) in the loss: the objective
  the project's loop optimises, so the gap to it is the loop's own cost.
The machine is shared: every variant runs `repeats` times, interleaved, and its fastest run counts;
on a CPU the clock is the process's CPU time (one thread: the work itself, whatever else the machine
runs), on a GPU the wall clock after a synchronise.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import torch

from data.shards import Shard
from tasks.experiment import Experiment
from tasks.training import inverse_row_counts, make_optimizer, optimized_parameters, task_labels, train_epochs
from tasks.wide import train_round

CLIENT_ROUND = 2  # past train.wide_rounds (1): a round whose client trains the deep part


def clock(device: torch.device) -> float:
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def bare_loop(experiment: Experiment, shard: Shard, seed: int, with_l2: bool) -> float:
    """Seconds of one epoch of the plain loop (the model built and the tensors made before the clock)."""
    cfg, device = experiment.cfg, experiment.device
    model, weighting = experiment.new_model().to(device), experiment.new_weighting().to(device)
    optimizer = torch.optim.Adagrad(optimized_parameters(make_optimizer(model, weighting, cfg["train"])),
                                    lr=float(cfg["train"]["lr"]))
    x = torch.as_tensor(shard.features, device=device)
    labels = {k: torch.as_tensor(v, device=device) for k, v in task_labels(shard, experiment.tasks).items()}
    l2 = float(cfg["train"].get("embedding_l2", 0.0)) if with_l2 else 0.0
    weights = inverse_row_counts(shard, experiment.tasks, [t.num_embeddings for t in model.embedding.tables],
                                 device) if l2 else None
    order = torch.randperm(len(shard), generator=torch.Generator().manual_seed(seed))
    model.train()
    torch.manual_seed(seed)
    start = clock(device)
    for idx in order.split(int(cfg["train"]["batch_size"])):
        idx = idx.to(device)
        out = model(x[idx])
        loss = torch.zeros((), device=device)
        for task in experiment.tasks:
            y = labels[task.name][idx]
            mask = ~torch.isnan(y)
            if bool(mask.any()):
                loss = loss + task.loss(out[task.name][mask], y[mask])
        if l2:
            loss = loss + l2 * model.lookup_l2(x[idx], weights)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock(device) - start


def project_loop(experiment: Experiment, shard: Shard, seed: int, which: str) -> float:
    """Seconds of the project's loop over the same shard: `round` (train_round, as a client or the
    centralized baseline runs it) or `epochs` (train_epochs alone)."""
    cfg, device = experiment.cfg, experiment.device
    model, weighting = experiment.new_model().to(device), experiment.new_weighting().to(device)
    optimizer = make_optimizer(model, weighting, cfg["train"])
    one_epoch = {**cfg["train"], "local_epochs": 1}
    start = clock(device)
    if which == "round":
        train_round(model, weighting, optimizer, shard, experiment.tasks, one_epoch, seed, device, CLIENT_ROUND)
    else:
        train_epochs(model, weighting, optimizer, shard, experiment.tasks, one_epoch, seed, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock(device) - start


def fastest(runs: Mapping[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """name -> the fastest of `repeats` interleaved runs (seconds)."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], run())
    return best


def loop_cost(experiment: Experiment, repeats: int = 3) -> dict[str, Any]:
    """Samples/s of each loop on the largest merchant's train split (a client) and on the pooled
    train splits (centralized); one epoch each, batch size and order as the run's."""
    torch.set_num_threads(1)
    merchants = experiment.index.merchants
    client = max(merchants, key=lambda m: m.n_train)
    splits = {"client": client.shard("train"),
              "centralized": Shard.concat([m.shard("train") for m in merchants])}
    figures: dict[str, Any] = {"client_merchant": client.merchant_id, "device": str(experiment.device),
                               "clock": "wall" if experiment.device.type == "cuda" else "CPU"}
    for where, shard in splits.items():
        runs = {"bare": lambda s=shard: bare_loop(experiment, s, 1, False),
                "bare_l2": lambda s=shard: bare_loop(experiment, s, 1, True),
                "round": lambda s=shard: project_loop(experiment, s, 1, "round")}
        if where == "client":
            runs["epochs"] = lambda s=shard: project_loop(experiment, s, 1, "epochs")
        seconds = fastest(runs, repeats)
        figures[where] = {"rows": len(shard), **{name: len(shard) / s for name, s in seconds.items()}}
        print(f"loop ({where}, {len(shard)} rows): " + ", ".join(f"{k} {len(shard) / s:.0f} rows/s"
                                                             for k, s in seconds.items()), flush=True)
    return figures
