"""A merchant's optimizer state kept between rounds (client_app/optimizer_state.py): restored into a
new optimizer it continues exactly where the old one stopped, and an id table keeps only its rows."""

import torch
from flwr.app import RecordDict

from client_app.optimizer_state import OPTIMIZER_STATE, ROWS, load_optimizer_state, save_optimizer_state
from core.config import compose_config, to_plain
from tasks.models import build_model
from tasks.state import joint_parameters
from tasks.training import make_optimizer
from tasks.weighting import build_weighting

BUCKETS = [40, 30]
TASKS = ["rating", "click"]


def trainer(seed: int = 0):
    cfg = to_plain(compose_config(["device=cpu"]))
    torch.manual_seed(seed)
    model = build_model({**cfg["model"], "dropout": 0.0}, BUCKETS, TASKS)
    weighting = build_weighting(cfg["loss"], TASKS)
    return model, weighting, make_optimizer(model, weighting, cfg["train"])


def step(model, optimizer, features, seed):
    torch.manual_seed(seed)
    optimizer.zero_grad()
    outputs = model(features)
    (outputs["rating"].pow(2).mean() + outputs["click"].sigmoid().mean()).backward()
    optimizer.step()


def test_a_restored_optimizer_continues_as_the_one_that_was_never_stopped():
    features = torch.tensor([[1, 2], [1, 3], [7, 2], [9, 29]])
    model, weighting, optimizer = trainer()
    for seed in range(3):
        step(model, optimizer, features, seed)
    kept = RecordDict()
    save_optimizer_state(kept, optimizer, joint_parameters(model, weighting), model.id_tables())
    record = kept.array_records[OPTIMIZER_STATE]
    # The user table holds state in the rows the batches looked up, and only those are kept.
    assert record[f"embedding.tables.0.weight|{ROWS}"].numpy().tolist() == [1, 7, 9]
    assert record["embedding.tables.0.weight|sum"].numpy().shape == (3, model.embedding.tables[0].weight.shape[1])

    # The next round: a new model at the same (global) parameters and a new optimizer.
    again, again_weighting, fresh = trainer(seed=1)
    again.load_state_dict(model.state_dict())
    assert load_optimizer_state(kept, fresh, joint_parameters(again, again_weighting))
    step(model, optimizer, features, seed=5)
    step(again, fresh, features, seed=5)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)

    # Without kept state (the first round) nothing is restored.
    assert not load_optimizer_state(RecordDict(), trainer()[2], joint_parameters(*trainer()[:2]))
