"""Federated vs centralized vs local on the same data, config and budget, with the oracle alongside.

    python -m benchmarks.quality [hydra overrides...]      (make bench ARGS="...")

Every mode keeps its best validation round of at most 20 (PROTOCOL; override federation.rounds or
data.val_fraction to change it, e.g. data.val_fraction=0 federation.rounds=10 for a fixed budget).

Each mode runs once per seed (--seeds, default 3) and the report shows means over seeds, since one
run's purchase AUC moves by about 0.01 with the seed alone. Then the simple pooled references of
benchmarks/references.py (mean, merchant mean, bias model, one-hot linear, MF) run once on the same
merchants' splits (they are deterministic). Writes
outputs/bench/quality/{centralized,federated,local}/seed-N/ (each a normal run's outputs) and
outputs/bench/quality/report.md and merchants.png (each merchant's metric against its size, the modes
side by side), and prints the report: the per-task table with the references' rows,
which method is best per task, federated against every reference, the federated/centralized ratios
against the floors, and federated vs local on the merchants with the least data.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from benchmarks.references import (MerchantSplits, ReferenceResult, chosen_table, gather_splits, refits,
                                   run_references, tuning_note)
from benchmarks.report import make_command, markdown, publish
from core.config import compose_config, to_plain
from core.errors import InputError
from launch.simulation import run_federated_simulation
from server_app.orchestration import run_job
from server_app.merchant_view import plot_merchants
from server_app.outputs import RunResult, read_metrics_document
from tasks.experiment import open_experiment
from serving.model import load
from tasks.metrics import (auc_difference_error, auc_standard_error, combined_standard_error, rmse_difference_error,
                           rmse_standard_error)
from tasks.personalization import SUFFIX
from tasks.registry import TASKS, Task
from tasks.training import predict, task_labels

FLOORS = {"auc": 0.98, "rmse": 1.02}  # federated/centralized: AUC at least, RMSE at most (issue 8)
# The best-round protocol, unless the overrides say otherwise: every mode trains up to 20 rounds and
# keeps its best round by the loss on a validation split (the latest 10 % of each merchant's train
# rows; select_round=auto), with early stopping. A fixed budget would partly measure where each mode
# stands on its own curve (pooled training peaks by round 3-5, federated averaging later). It is what
# the product does by default on any data with a validation split (conf/federation: rounds), so a
# user's plain `merchant-fl data=table data.path=...` runs exactly what this reports on its table.
PROTOCOL = {"federation.rounds": "20", "data.val_fraction": "0.1"}
SMALLEST = 5
OUT = "outputs/bench/quality"
Predictions = dict[str, dict[str, np.ndarray]]  # merchant -> task -> its test split's predictions, every row


def fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def metric_columns(tasks: list[str]) -> list[tuple[str, str]]:
    return [(t, m) for t in tasks for m in TASKS[t].metric_names]


def better(task: str, metric: str, a: float, b: float) -> bool:
    return a > b if metric in TASKS[task].higher_is_better else a < b


def mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def kept_label(run: RunResult) -> str:
    """The kept round, and the heads its model replaced by their prior (tasks/selection.py behind_prior)."""
    heads = f" ({', '.join(run.prior_heads)} at prior)" if run.prior_heads else ""
    return f"{run.selected_round}{heads}"


def over_seeds(runs: list[RunResult]) -> RunResult:
    """One result whose final and per-merchant metrics are the means over the seeds' runs."""
    def average(dicts: list[dict]) -> dict:
        keys = {t: {m for d in dicts for m in d.get(t, {})} for d in dicts for t in d}
        return {t: {m: mean([d.get(t, {}).get(m) for d in dicts]) for m in ms} for t, ms in keys.items()}
    first = runs[0]
    final = average([r.final for r in runs])
    per_merchant = {x: average([r.per_merchant[x] for r in runs]) for x in first.per_merchant}
    kept = [r.selected_round for r in runs]
    selected = ", ".join(kept_label(r) for r in runs) if all(isinstance(k, int) for k in kept) else "per merchant"
    return RunResult(first.mode, first.tasks, first.rounds, final, per_merchant, selected, {}, first.config,
                     first.oracle, merchant_rows=first.merchant_rows)


def value(final: Mapping[str, Mapping[str, float]], task: str, metric: str) -> float | None:
    v = final.get(task, {}).get(metric)
    return v if v is not None and math.isfinite(v) else None


def best_of(candidates: Mapping[str, Mapping[str, Mapping[str, float]]], task: str, metric: str
            ) -> tuple[str, float] | None:
    """The (name, value) with the best value of one metric among named final metrics."""
    best = None
    for name, final in candidates.items():
        v = value(final, task, metric)
        if v is not None and (best is None or better(task, metric, v, best[1])):
            best = (name, v)
    return best


def held_out_labels(splits: Mapping[str, MerchantSplits], tasks: Sequence[Task]) -> dict[str, dict[str, tuple[int, int]]]:
    """Per merchant and task, its test split's (labels, positives); positives are 0 for the rating."""
    out = {}
    for merchant, split in splits.items():
        labels = task_labels(split.test, tasks)
        out[merchant] = {t.name: (int(np.isfinite(labels[t.name]).sum()),
                                  int(np.nansum(labels[t.name])) if t.kind == "binary" else 0) for t in tasks}
    return out


def sampling_error(task: str, metric: str, per_merchant: Mapping[str, Mapping[str, Mapping[str, float]]],
                   counts: Mapping[str, Mapping[str, tuple[int, int]]]) -> float:
    """The approximate sampling error of one model's headline metric on these test splits, merchants
    combined like the metric (tasks/metrics.py); the model's own per-merchant values set its size."""
    errors = {}
    for merchant, (n, positives) in ((m, c[task]) for m, c in counts.items() if task in c):
        v = per_merchant.get(merchant, {}).get(task, {}).get(metric)
        if v is None:
            continue
        se = auc_standard_error(v, positives, n - positives) if metric == "auc" else rmse_standard_error(v, n)
        errors[merchant] = (se, n)
    return combined_standard_error(errors)


def run_predictions(run_dir: Path, splits: Mapping[str, MerchantSplits]) -> Predictions:
    """A finished run's kept model (a mode=local run: each merchant's own) scoring every merchant's test split."""
    trained = load(run_dir)
    return {m: predict(trained.model_for(m), split.test.features, trained.tasks, trained.device)
            for m, split in splits.items()}


def paired_error(task: str, metric: str, a: Predictions, b: Predictions, splits: Mapping[str, MerchantSplits]) -> float:
    """The sampling error of the difference between two models' headline metric on the same test rows
    (tasks/metrics.py: DeLong for an AUC, the delta method for an RMSE), merchants combined like the metric."""
    difference_error = auc_difference_error if metric == "auc" else rmse_difference_error
    errors = {}
    for merchant, split in splits.items():
        if task not in a.get(merchant, {}) or task not in b.get(merchant, {}):
            continue
        y = task_labels(split.test, [TASKS[task]])[task]
        rows = np.isfinite(y)
        errors[merchant] = (difference_error(y[rows], a[merchant][task][rows], b[merchant][task][rows]), int(rows.sum()))
    return combined_standard_error(errors)


TIE_PAIRED_ERRORS = 2.0  # a margin within this many paired errors could flip on another test window


def is_tie(margin: float, paired: float | None) -> bool:
    """Whether a margin is within TIE_PAIRED_ERRORS of its paired error: the verdict's sign is then not
    something the test split can tell (false where there is no paired error)."""
    return paired is not None and abs(margin) < TIE_PAIRED_ERRORS * paired


def reference_sections(results: dict[str, RunResult], references: Mapping[str, ReferenceResult],
                       seed_finals: Sequence[Mapping[str, Mapping[str, float]]] = (),
                       counts: Mapping[str, Mapping[str, tuple[int, int]]] | None = None,
                       seed_predictions: Sequence[Predictions] = (),
                       splits: Mapping[str, MerchantSplits] | None = None) -> str:
    """Per task the best method overall and the best reference, then federated against every reference:
    with `seed_finals` (federated's final metrics per seed) and `counts` (held_out_labels), how far ahead it
    is, seed by seed and against the test split's own sampling error; with `seed_predictions` (federated's
    test predictions per seed, run_predictions) and `splits`, against the margin's own (paired) error."""
    tasks = results["federated"].tasks
    fed = results["federated"].final
    lines, rows = [], []
    for t in tasks:
        m = TASKS[t].metric_names[0]  # the headline metric: AUC, or RMSE for the rating
        overall = best_of({**{mode: r.final for mode, r in results.items()},
                           **{f"the {n} reference": r.final for n, r in references.items()}}, t, m)
        best_ref = best_of({n: r.final for n, r in references.items()}, t, m)
        f = value(fed, t, m)
        if overall is None or best_ref is None or f is None:
            continue
        lines.append(f"- {t} {m}: best is {overall[0]} ({overall[1]:.4f}); best reference: {best_ref[0]} "
                     f"({best_ref[1]:.4f})")
        refs = [value(r.final, t, m) for r in references.values()]
        beats = all(v is None or better(t, m, f, v) for v in refs)
        fed_ll = base_ll = None
        if TASKS[t].kind == "binary" and "mean" in references:
            fed_ll, base_ll = value(fed, t, "logloss"), value(references["mean"].final, t, "logloss")
            beats = beats and fed_ll is not None and base_ll is not None and fed_ll < base_ll
        margin = (f - best_ref[1]) * (1 if m in TASKS[t].higher_is_better else -1)
        per_seed = ", ".join(fmt(value(final, t, m)) for final in seed_finals) or "-"
        error = sampling_error(t, m, results["federated"].per_merchant, counts) if counts else math.nan
        reference_predictions = references[best_ref[0]].predictions
        paired = [paired_error(t, m, seed, reference_predictions, splits) for seed in seed_predictions] if splits else []
        paired_mean = float(np.mean(paired)) if paired and all(math.isfinite(e) for e in paired) else None
        rows.append([f"{t} {m}", fmt(f), per_seed, f"{best_ref[0]} ({best_ref[1]:.4f})", f"{margin:+.4f}",
                     fmt(paired_mean), fmt(error if math.isfinite(error) else None), fmt(fed_ll), fmt(base_ll),
                     ("yes" if beats else "NO") + (" (a tie)" if is_tie(margin, paired_mean) else "")])
    verdict = markdown(["task", "federated", "per seed", "best reference", "margin", "paired error", "test-split error",
                        "federated logloss", "base-rate logloss", "federated beats every reference"], rows)
    return ("Best per task (mean over seeds for the modes):\n\n" + "\n".join(lines) + "\n\n"
            f"Federated against every reference (higher AUC, lower RMSE, and for binary tasks a log-loss "
            f"below the base rate's):\n\n{verdict}\n\n"
            "Margin: how far federated is ahead of the best reference (negative: behind). Paired error: the "
            "sampling error of the margin itself, both scored on the same test rows (DeLong for an AUC, the "
            "delta method for an RMSE; merchants combined like the metric; mean over seeds): a margin within "
            "two of it is marked a tie, which another test window could reverse. Test-split error: the sampling "
            "error of one model's metric on these rows (Hanley-McNeil for an AUC, RMSE / sqrt(2n) for an "
            "RMSE), larger, since the same rows move both models.")


def per_merchant_section(results: Mapping[str, RunResult]) -> str:
    """Every merchant, smallest first: its train rows and each task's headline metric per mode, and on
    how many merchants federated beats the same merchant alone ("does federation help small merchants")."""
    fed = results["federated"]
    headline = [(t, TASKS[t].metric_names[0]) for t in fed.tasks]
    merchants = sorted(fed.merchant_rows, key=lambda m: (fed.merchant_rows[m], m))
    rows, wins = [], {t: [0, 0] for t, _ in headline}
    for merchant in merchants:
        row = [merchant, f"{fed.merchant_rows[merchant]:,}"]
        for t, m in headline:
            values = {mode: r.per_merchant.get(merchant, {}).get(t, {}).get(m) for mode, r in results.items()}
            row += [fmt(values[mode]) for mode in results]
            f, l = values.get("federated"), values.get("local")
            if f is not None and l is not None and math.isfinite(f) and math.isfinite(l):
                wins[t][0] += better(t, m, f, l)
                wins[t][1] += 1
        rows.append(row)
    header = ["merchant", "train rows", *(f"{t} {m} {mode}" for t, m in headline for mode in results)]
    verdict = "; ".join(f"{t} {m}: {w}/{n}" for (t, m), (w, n) in zip(headline, wins.values()))
    return (f"Per merchant, smallest first (merchants.png plots the same):\n\n{markdown(header, rows)}\n\n"
            f"Federated better than the merchant alone (local) on: {verdict}.\n")


def report(results: dict[str, RunResult], smallest: list[str], seconds: dict[str, float], command: str,
           references: Mapping[str, ReferenceResult] | None = None, references_note: str = "",
           seed_finals: Sequence[Mapping[str, Mapping[str, float]]] = (),
           counts: Mapping[str, Mapping[str, tuple[int, int]]] | None = None,
           seed_predictions: Sequence[Predictions] = (), splits: Mapping[str, MerchantSplits] | None = None) -> str:
    tasks = results["federated"].tasks
    cols = metric_columns(tasks)
    rows = []
    for mode, r in results.items():
        rows.append([mode, *(fmt(r.final.get(t, {}).get(m)) for t, m in cols), str(r.selected_round),
                     f"{seconds[mode]:.0f}" if math.isfinite(seconds[mode]) else "-"])
        if any(k.endswith(SUFFIX) for metrics in r.final.values() for k in metrics):  # personalization=local_bias
            rows.append([f"{mode}, each merchant's offsets", *(fmt(r.final.get(t, {}).get(m + SUFFIX)) for t, m in cols),
                         str(r.selected_round), "-"])
    for name, ref in (references or {}).items():
        rows.append([f"{name} (reference)", *(fmt(ref.final.get(t, {}).get(m)) for t, m in cols), "-",
                     f"{ref.seconds:.0f}"])
    oracle = results["centralized"].oracle
    if oracle:
        rows.append(["oracle (ground truth)", *(fmt(oracle.get(t, {}).get(m)) for t, m in cols), "-", "-"])
    table = markdown(["mode (mean over seeds)", *(f"{t} {m}" for t, m in cols), "kept round per seed",
                      "seconds per run"], rows)

    fed, cen, loc = (results[m] for m in ("federated", "centralized", "local"))
    ratio_rows = []
    for t, m in cols:
        if m not in FLOORS:
            continue
        ratio = fed.final[t][m] / cen.final[t][m]
        ok = ratio >= FLOORS[m] if m == "auc" else ratio <= FLOORS[m]
        bound = f">= {FLOORS[m]}" if m == "auc" else f"<= {FLOORS[m]}"
        ratio_rows.append([f"{t} {m}", f"{ratio:.4f}", bound, "yes" if ok else "NO"])
    ratios = markdown(["federated / centralized", "ratio", "floor", "holds"], ratio_rows)

    small_rows = []
    for t, m in cols:
        pairs = [(fed.per_merchant[x].get(t, {}).get(m), loc.per_merchant[x].get(t, {}).get(m)) for x in smallest]
        pairs = [(f, l) for f, l in pairs if f is not None and l is not None and math.isfinite(f) and math.isfinite(l)]
        if not pairs:
            continue
        wins = sum(better(t, m, f, l) for f, l in pairs)
        small_rows.append([f"{t} {m}", fmt(sum(f for f, _ in pairs) / len(pairs)),
                           fmt(sum(l for _, l in pairs) / len(pairs)), f"{wins}/{len(pairs)}"])
    small = markdown(["metric (unweighted mean)", "federated", "local", "federated better on"], small_rows)
    refs = ""
    if references:
        refs = (f"References: pooled over every merchant's train rows, run once (deterministic); "
                f"{references_note or 'settings chosen on validation'}. The linear reference is "
                f"logistic regression for binary tasks and ridge for the rating; MF is the bias model plus "
                f"p_u . q_i (benchmarks/references.py).\n\n"
                f"{chosen_table(references, tasks)}\n\n{reference_sections(results, references, seed_finals, counts, seed_predictions, splits)}\n\n")
    merchants = f"\n{per_merchant_section(results)}" if fed.merchant_rows else ""
    return (f"Command: `{command}`\n\n{table}\n\n{refs}{ratios}\n\n"
            f"Merchants with the least training data ({', '.join(smallest)}):\n\n{small}\n{merchants}")


def stored_run(directory: Path) -> RunResult:
    """One run of an earlier bench (--from-runs), or one clear line if it is not there."""
    if not (directory / "metrics.json").is_file():
        raise InputError(f"--from-runs: {directory / 'metrics.json'} does not exist (run the bench with the same "
                         "--out, --seeds and overrides first)")
    return read_metrics_document(directory / "metrics.json")


def with_protocol(overrides: list[str]) -> list[str]:
    """The overrides, after the PROTOCOL settings they do not set themselves."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return [f"{key}={value}" for key, value in PROTOCOL.items() if key not in given] + list(overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to all three modes")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--seeds", type=int, default=3,
                        help="runs per mode (seed=0..N-1: model init, batch order, dropout); metrics are averaged")
    parser.add_argument("--no-references", action="store_true",
                        help="skip the pooled references (mean, merchant mean, bias model, one-hot linear, MF)")
    parser.add_argument("--from-runs", action="store_true",
                        help="train nothing: rebuild the report from the runs already in --out (each mode's "
                             "seed-N/metrics.json), e.g. after the references failed; seconds per run show as -")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = Path(args.out).resolve()
    try:
        results, seconds, seed_finals = {}, {}, {}
        for mode in ("centralized", "federated", "local"):
            runs, start = [], time.perf_counter()
            for seed in range(args.seeds):
                cfg = to_plain(compose_config([*with_protocol(args.overrides), f"mode={mode}", f"seed={seed}"]))
                if args.from_runs:
                    runs.append(stored_run(out / mode / f"seed-{seed}"))
                    continue
                run = run_federated_simulation if mode == "federated" else run_job
                runs.append(run(cfg, out / mode / f"seed-{seed}"))
            results[mode], seed_finals[mode] = over_seeds(runs), [r.final for r in runs]
            seconds[mode] = math.nan if args.from_runs else (time.perf_counter() - start) / args.seeds
            print(f"{mode}: {args.seeds} run(s), " + (f"read from {out / mode}" if args.from_runs
                                                        else f"{seconds[mode]:.0f} s each"), flush=True)
        index = open_experiment(cfg, prepare=True).index
        smallest = [m.merchant_id for m in sorted(index.merchants, key=lambda m: m.n_train)[:SMALLEST]]
        references, note, counts, splits, seed_predictions = None, "", None, None, []
        if not args.no_references:
            start = time.perf_counter()
            splits, run_tasks, features = gather_splits(cfg)
            refit = refits(cfg, splits)
            references = run_references(splits, run_tasks, features, seed=0, refit=refit)
            note = tuning_note(splits, refit)
            counts = held_out_labels(splits, run_tasks)
            print(f"references: {time.perf_counter() - start:.0f} s", flush=True)
            seed_predictions = [run_predictions(out / "federated" / f"seed-{seed}", splits) for seed in range(args.seeds)]
    except InputError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    command = make_command("bench", args.overrides)
    if args.seeds != 3 or args.out != OUT or args.no_references or args.from_runs:
        command = " ".join(["python -m benchmarks.quality", f"--seeds {args.seeds}", f"--out {args.out}",
                            *(["--no-references"] if args.no_references else []),
                            *(["--from-runs"] if args.from_runs else []), *args.overrides])
    publish(report(results, smallest, seconds, command, references, note, seed_finals["federated"], counts,
                   seed_predictions, splits), out)
    plot_merchants(results, out / "merchants.png", {t: TASKS[t].metric_names for t in results["federated"].tasks})
    return 0


if __name__ == "__main__":
    sys.exit(main())
