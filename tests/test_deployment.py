"""A real deployment on loopback, driven by `make deploy-local`'s own script: one SuperLink with TLS and
SuperNode authentication, one SuperNode per merchant file, `flwr run . <name> --stream`.

One federation is run once for the module (each message starts a ClientApp process that imports
torch, so runs are slow on 2 cores) and every test reads one property of it:

- merchants m00 and m01 have good files; m02's file has a bad label; all three start;
- a fourth SuperNode with a key the platform never registered is refused;
- during round 1 m01's SuperNode is killed by its id, then started again (same key, same file);
- the data lies in a folder the SuperLink and ServerApp are never told about.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pandas as pd
import pytest

from launch.deploy_local import LocalDeployment, make_node_key, merchant_files

pytestmark = [pytest.mark.slow, pytest.mark.deployment]

ROUND_TIMEOUT_S = 60  # a healthy phase takes about 20 s here while the suite's other worker runs (make test: -n 2)
OVERRIDES = ["data.synthetic.n_rows=2400", "data.synthetic.n_users=200", "data.synthetic.n_items=80",
             "data.hash_buckets.user_id=512", "data.hash_buckets.item_id=512", "model.expert_dims=[16]",
             "model.tower_dims=[8]", "model.embedding_dim=8", "federation.rounds=2", "federation.min_nodes=3",
             f"federation.round_timeout_s={ROUND_TIMEOUT_S}", "federation.wait_for_nodes_s=120",
             "ranking.enabled=false", "device=cpu"]
UNREGISTERED_EXIT_CODE = 305


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    work = tmp_path_factory.mktemp("deployment")
    merchants = merchant_files(OVERRIDES, 3, work / "merchants-only" / "files")
    bad = merchants[2].path.with_name("m02-bad.csv")
    frame = pd.read_parquet(merchants[2].path)
    frame.loc[4, "click"] = 7.0
    frame.to_csv(bad, index=False)
    output_dir = work / "outputs"
    outcome: dict = {"merchants": merchants, "bad_file": bad, "output_dir": output_dir}
    with LocalDeployment(work / "platform") as deployment:
        deployment.start_superlink()
        for k, path in enumerate([merchants[0].path, merchants[1].path, bad]):
            deployment.add_merchant(f"node-{k}", path)
        stranger = deployment.start_node("stranger", merchants[0].path,
                                         key=make_node_key(work / "platform" / "keys" / "stranger").with_suffix(""))
        started = time.monotonic()
        deployment.start_run(OVERRIDES, output_dir)
        outcome["stranger_exit"] = stranger.wait(timeout=120)
        outcome["stranger_log"] = (deployment.logs / "stranger.log").read_text()
        # Round 0's evaluation is logged as the first row of the table: training round 1 starts next.
        wait_for(lambda: "per-round test metrics" in deployment.run_output(), 300, "round 0")
        time.sleep(3)
        deployment.stop("node-1", signal.SIGKILL)
        outcome["killed_at"] = time.monotonic() - started
        deployment.restart_node("node-1-again", merchants[1].path, key=work / "platform" / "keys" / "node-1")
        outcome["rejoined_at"] = time.monotonic() - started
        outcome["finished"], outcome["output"] = deployment.wait_run(output_dir, timeout_s=600)
        outcome["seconds"] = time.monotonic() - started
        outcome["status"] = deployment.last_run_status()
        outcome["logs"] = deployment.logs
        outcome["pids"] = [p.pid for p in deployment.processes.values()] + [stranger.pid]
    outcome["metrics"] = json.loads((output_dir / "metrics.json").read_text()) if outcome["finished"] else None
    return outcome


def test_a_run_over_tls_with_node_auth_completes(federation):
    assert federation["finished"], federation["output"][-3000:]
    doc = federation["metrics"]
    assert doc["mode"] == "federated" and [r["round"] for r in doc["rounds"]] == [0, 1, 2]
    assert set(doc["per_merchant"]) == {"m00", "m01"}
    assert federation["status"] == "finished:completed"


def test_an_unregistered_node_is_refused(federation):
    assert federation["stranger_exit"] != 0
    assert f"Exit Code: {UNREGISTERED_EXIT_CODE}" in federation["stranger_log"]
    assert "Failed to activate SuperNode" in federation["stranger_log"]


def test_a_node_with_a_bad_file_fails_alone_with_its_clear_error(federation):
    failures = federation["metrics"]["failures"]
    bad = [f for f in failures if f["merchant"] == "m02"]
    assert bad and bad[0]["round"] == 0
    assert bad[0]["reason"] == (f"{federation['bad_file']}: column 'click' must be 0 or 1 (or empty); "
                                "found 7 at row 5 (1 bad value(s))")
    assert all("Traceback" not in f["reason"] for f in failures)


def test_a_killed_node_does_not_stop_the_run_and_no_round_hangs(federation):
    doc = federation["metrics"]
    assert any(f["merchant"] == "m01" and f["round"] >= 1 for f in doc["failures"])
    # Every phase waits at most its timeout: 2 rounds x (train + evaluate) + setup + final evaluation.
    assert federation["seconds"] < federation["killed_at"] + 6 * ROUND_TIMEOUT_S


def test_a_rejoined_node_is_used_from_the_next_round(federation):
    log = (federation["logs"] / "node-1-again.log").read_text()
    assert "Receiving: train message" in log and "Receiving: evaluate message" in log
    assert "m01" in federation["metrics"]["per_merchant"]  # the final evaluation reached the new node


def test_the_server_is_never_told_where_data_lies(federation):
    """The SuperLink and ServerApp were never given a data path, and the run still completed; the only
    path the server ever sees is in the bad node's own error line."""
    files = str(federation["merchants"][0].path.parent.parent)
    assert files not in (federation["logs"] / "superlink.log").read_text()
    assert files not in json.dumps(federation["metrics"]["config"])
    assert all(files not in line or "m02-bad.csv: column 'click'" in line
               for line in federation["output"].splitlines())


def test_every_process_is_stopped(federation):
    for pid in federation["pids"]:
        assert subprocess.run(["ps", "-p", str(pid)], capture_output=True).returncode != 0, pid
