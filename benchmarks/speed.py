"""Speed and memory as ratios measured in one run; the machine is shared and noisy, so compare the
ratios, not the seconds.

    python -m benchmarks.speed [hydra overrides...]      (make bench-speed ARGS="...")

1. What federation costs: the same job (config, rounds, per-merchant epochs, per-round evaluation)
   run as mode=federated through a real Flower simulation, as mode=local in one process (the same
   per-merchant training without transport or aggregation) and as mode=centralized (the rows pooled).
2. What the server's aggregation costs: the per-task average of one round's updates, against the
   clients' training in that round.
3. What each architecture costs: parameters, the bytes one client sends per round, training and
   scoring throughput over the pooled train split, and the peak memory of a process that trains it,
   each in a fresh process; ratios to shared_bottom.
4. How fast `merchant-fl-score` scores a 1,000,000-row table end to end (benchmarks/scoring.py).
5. The training loop against a bare PyTorch loop, as a client and as mode=centralized run it
   (benchmarks/loop.py).
6. A simulated federation from 10 to 10,000 merchants, 100 trained and evaluated per round: the
   simulation's overhead over the clients' own time, Ray's start-up, set-up, end to end and memory
   (benchmarks/scale.py; `--scale 10,100,1000,10000` for the whole table, default 10,100).
7. Generating, partitioning, preparing and loading 1,000,000 interactions; loading one merchant's shard.
`--sections` picks some of them (default all). Writes outputs/bench/speed/report.md.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from benchmarks.loop import loop_cost
from benchmarks.report import make_command, markdown, publish
from benchmarks.scale import PER_ROUND, ROUNDS, ROWS_PER_MERCHANT, data_cost, simulation_cost
from benchmarks.scoring import scoring_cost, scoring_table
from core.config import CONF_DIR, compose_config, to_plain
from core.errors import InputError
from core.runtime import torch_threads
from data.shards import Shard
from launch.simulation import run_federated_simulation
from server_app.aggregation import ClientUpdate, aggregate_multitask
from server_app.orchestration import run_job
from tasks.experiment import open_experiment
from tasks.state import joint_owners, joint_state, load_joint_state, snapshot_state
from tasks.training import make_optimizer, predict, shuffle_seed, train_epochs

REFERENCE_MODEL = "shared_bottom"


def _timed(fn, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def federation_cost(overrides: list[str], out: Path) -> dict[str, float]:
    """Wall seconds of one run per mode."""
    seconds = {}
    for mode in ("federated", "local", "centralized"):
        cfg = to_plain(compose_config([*overrides, f"mode={mode}"]))
        run = run_federated_simulation if mode == "federated" else run_job
        _, seconds[mode] = _timed(run, cfg, out / mode)
        print(f"{mode}: {seconds[mode]:.1f} s", flush=True)
    return seconds


def aggregation_cost(cfg: Mapping[str, Any]) -> dict[str, float]:
    """One round's client training, one merchant after another, then the server's average of their
    updates: the ratio is what aggregation adds to a round's compute."""
    experiment = open_experiment(cfg, prepare=True)
    model, weighting = experiment.new_model(), experiment.new_weighting()
    start_state = snapshot_state(model, weighting)
    updates, train_s = [], 0.0
    for k, merchant in enumerate(experiment.index.merchant_ids):
        load_joint_state(model, weighting, start_state)
        optimizer = make_optimizer(model, weighting, cfg["train"])
        with torch_threads(int(cfg["federation"]["client_cpus"])):  # as a simulated client trains
            report, seconds = _timed(train_epochs, model, weighting, optimizer, experiment.shard(merchant, "train"),
                                     experiment.tasks, cfg["train"], shuffle_seed(0, 1, k), torch.device("cpu"))
        train_s += seconds
        updates.append(ClientUpdate({n: v.numpy().copy() for n, v in joint_state(model, weighting).items()},
                                    report.examples, report.label_counts))
    current = {n: v.numpy() for n, v in start_state.items()}
    _, aggregate_s = _timed(aggregate_multitask, current, updates, joint_owners(model, weighting))
    return {"updates": len(updates), "train_s": train_s, "aggregate_s": aggregate_s}


def model_figures(overrides: list[str], model_name: str) -> dict[str, float]:
    """Run in a fresh process, so that its peak memory is this architecture's alone."""
    cfg = to_plain(compose_config([*overrides, f"model={model_name}"]))
    experiment = open_experiment(cfg)
    merchants = experiment.index.merchant_ids
    pooled = Shard.concat([experiment.shard(m, "train") for m in merchants])
    model, weighting = experiment.new_model(), experiment.new_weighting()
    update = joint_state(model, weighting)
    optimizer = make_optimizer(model, weighting, cfg["train"])
    one_epoch = {**cfg["train"], "local_epochs": 1}
    _, train_s = _timed(train_epochs, model, weighting, optimizer, pooled, experiment.tasks, one_epoch, 0,
                        torch.device("cpu"))
    _, predict_s = _timed(predict, model, pooled.features, experiment.tasks, torch.device("cpu"))
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "update_mb": sum(v.numel() * v.element_size() for v in update.values()) / 2**20,
            "train_rows_s": len(pooled) / train_s, "predict_rows_s": len(pooled) / predict_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def architecture_cost(overrides: list[str]) -> dict[str, dict[str, float]]:
    names = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    names.remove(REFERENCE_MODEL)
    figures = {}
    context = multiprocessing.get_context("spawn")
    for name in [REFERENCE_MODEL, *names]:
        with context.Pool(1, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            figures[name] = pool.apply(model_figures, (overrides, name))
        print(f"model={name}: {figures[name]['train_rows_s']:.0f} train rows/s", flush=True)
    return figures


SECTIONS = ("federation", "aggregation", "architectures", "scoring", "loop", "scale", "data")


def federation_section(rounds: int, federation: dict[str, float]) -> list[str]:
    rows = [[mode, f"{s:.1f}", f"{s / federation['local']:.2f}", f"{s / federation['centralized']:.2f}"]
            for mode, s in federation.items()]
    return [f"What federation costs ({rounds} rounds; wall seconds of one run each, Ray start-up included for "
            "federated):", markdown(["mode", "seconds", "x local", "x centralized"], rows)]


def aggregation_section(agg: dict[str, float]) -> list[str]:
    rows = [[str(agg["updates"]), f"{agg['train_s']:.2f}", f"{agg['aggregate_s']:.3f}",
             f"{agg['aggregate_s'] / agg['train_s']:.3f}"]]
    return ["What the server's aggregation costs (one round, every merchant, one process):",
            markdown(["updates", "client training s", "aggregation s", "aggregation / training"], rows)]


def architecture_section(architectures: dict[str, dict[str, float]]) -> list[str]:
    ref = architectures[REFERENCE_MODEL]
    rows = [[name, f"{f['parameters']:,}", f"{f['update_mb']:.2f}",
             *(x for key in ("train_rows_s", "predict_rows_s", "peak_rss_mb")
               for x in (f"{f[key]:.0f}", f"{f[key] / ref[key]:.2f}"))]
            for name, f in architectures.items()]
    return [f"What each architecture costs (one epoch over the pooled train split, one thread, a fresh process "
            f"each; ratios to {REFERENCE_MODEL}):",
            markdown(["model", "parameters", "update MB", "train rows/s", "x", "score rows/s", "x",
                      "peak RSS MB", "x"], rows)]


def scoring_section(scoring: list[dict[str, float | str]]) -> list[str]:
    return ["What scoring traffic costs (merchant-fl-score: a 1,000,000-row table read, scored and written in "
            "batches, with a one-round centralized model of this config):", scoring_table(scoring)]


def loop_section(loop: dict[str, Any]) -> list[str]:
    labels = {"round": "train_round, as {}", "epochs": "train_epochs alone (the epochs of every mode)",
              "bare_l2": "bare PyTorch loop + the run's L2 prior", "bare": "bare PyTorch loop"}
    rows = []
    for where, split, runner in (("client", f"merchant {loop['client_merchant']}'s train split", "a client runs it"),
                                 ("centralized", "every train split pooled", "mode=centralized runs it")):
        figures = loop[where]
        for key in ("round", "epochs", "bare_l2", "bare"):
            if key in figures:
                rows.append([split, labels[key].format(runner), f"{figures['rows']:,}", f"{figures[key]:.0f}",
                             f"{figures[key] / figures['bare']:.2f}", f"{figures[key] / figures['bare_l2']:.2f}"])
    return [f"The training loop against a bare PyTorch loop (same tensors, model, optimizer, batch size, batch "
            f"order and steps; one epoch, one thread, {loop['device']}; rows/s of {loop['clock']} time, the "
            f"fastest of interleaved repeats; benchmarks/loop.py):",
            markdown(["rows of", "loop", "rows", "rows/s", "x bare", "x bare + L2"], rows)]


def scale_section(scale: dict[int, dict[str, Any]]) -> list[str]:
    rows = [[f"{n:,}", f"{f['rows']:,}", f"{f['partition_s']:.1f}", f"{f['ray_start_s']:.1f}",
             f"{f['prepared']}", f"{f['setup_s']:.1f} / {f['train_s']:.1f} / {f['evaluate_s']:.1f}",
             f"{f['federated_s']:.1f}", f"{f['overhead']:.2f}", f"{f['overhead_all']:.2f}",
             f"{f['overhead_per_actor']:.2f}", f"{f['ray_stop_s']:.1f}", f"{f['wall_s']:.0f}",
             f"{f['peak_pss_mb']:,.0f} ({f['peak_rss_mb']:,.0f})", f"{f['load']:.1f}"]
            for n, f in scale.items()]
    actors = sorted({f["actors"] for f in scale.values()})
    return [f"A simulated federation as the platform grows ({ROWS_PER_MERCHANT} rows per merchant on average, "
            f"{PER_ROUND} merchants trained and {PER_ROUND} evaluated per round (all of them below {PER_ROUND}), "
            f"{ROUNDS} rounds, an empty cache; {'/'.join(map(str, actors))} Ray actors; benchmarks/scale.py). "
            "set up = merchants whose data was prepared; client s = the clients' own seconds inside the actors "
            "(set-up / train / evaluate, summed over the actors working in parallel); federated = wall seconds "
            "from the first client message to the outputs; x train+eval = federated / (train + evaluate), x all = "
            "federated / (set-up + train + evaluate), per actor = x all times the actors; end to end = the "
            "process, start to exit; memory = its whole process tree; load = the machine's mean load average "
            "meanwhile (other jobs included):",
            markdown(["merchants", "rows", "partition s", "Ray start-up s", "set up", "client s",
                      "federated s", "x train+eval", "x all", "per actor", "Ray shut-down s",
                      "end to end s", "peak PSS MB (RSS)", "load"], rows)]


def data_section(data: dict[str, Any]) -> list[str]:
    rows_of = lambda n, s: f"{n / s:,.0f}" if s else "-"  # noqa: E731
    median, largest = data["median_merchant"], data["largest_merchant"]
    rows = [["generate (data/synthetic.py)", f"{data['generate_s']:.1f}", rows_of(data["rows"], data["generate_s"])],
            [f"partition: generate, validate, write {data['merchants']} merchant files", f"{data['partition_s']:.1f}",
             rows_of(data["rows"], data["partition_s"])],
            ["prepare every merchant (validate, hash, split, cache)", f"{data['prepare_s']:.1f}",
             rows_of(data["rows"], data["prepare_s"])],
            ["load every prepared split", f"{data['load_s']:.2f}", rows_of(data["loaded_rows"], data["load_s"])],
            [f"load one merchant's train split: the median ({median[0]}, {median[1]:,} rows)",
             f"{median[2]:.4f}", rows_of(median[1], median[2])],
            [f"load one merchant's train split: the largest ({largest[0]}, {largest[1]:,} rows)",
             f"{largest[2]:.4f}", rows_of(largest[1], largest[2])]]
    return [f"Data, {data['rows']:,} interactions of the default platform ({data['merchants']} merchants), from an "
            "empty cache, one process:", markdown(["step", "seconds", "rows/s"], rows)]


def report(command: str, parts: list[list[str]]) -> str:
    return "\n\n".join([f"Command: `{command}`", *(text for part in parts for text in part)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every measurement")
    parser.add_argument("--out", default="outputs/bench/speed")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, any of {', '.join(SECTIONS)} (default all)")
    parser.add_argument("--scale", default="10,100", help="merchant counts of the scale section (comma-separated)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each loop (fastest counts)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        print(f"bench-speed: error: unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})",
              file=sys.stderr)
        return 2
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = Path(args.out).resolve()
    parts: list[list[str]] = []
    try:
        cfg = to_plain(compose_config(args.overrides))
        if "aggregation" in sections:  # also builds the shard cache the other parts read
            parts.append(aggregation_section(aggregation_cost(cfg)))
        if "architectures" in sections:
            parts.append(architecture_section(architecture_cost(args.overrides)))
        if "federation" in sections:
            parts.insert(0, federation_section(int(cfg["federation"]["rounds"]), federation_cost(args.overrides, out)))
        if "scoring" in sections:
            parts.append(scoring_section(scoring_cost(args.overrides, out / "scoring")))
        if "loop" in sections:
            parts.append(loop_section(loop_cost(open_experiment(cfg), args.repeats)))
        if "scale" in sections:
            counts = [int(n) for n in args.scale.split(",") if n.strip()]
            parts.append(scale_section({n: simulation_cost(n, out / "scale" / str(n), args.overrides)
                                        for n in counts}))
        if "data" in sections:
            parts.append(data_section(data_cost(out / "data")))
    except InputError as exc:
        print(f"bench-speed: error: {exc}", file=sys.stderr)
        return 2
    flags = [] if args.sections == ",".join(SECTIONS) else [f"--sections {args.sections}"]
    flags += [f"--scale {args.scale}"] if "scale" in sections and args.scale != "10,100" else []
    flags += [f"--repeats {args.repeats}"] if "loop" in sections and args.repeats != 3 else []
    flags += [f"--out {args.out}"] if args.out != "outputs/bench/speed" else []
    publish(report(make_command("bench-speed", [*flags, *args.overrides]), parts), out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
