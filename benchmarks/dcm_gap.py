"""Where a multi-interest model's recall goes: per-slot, union-of-lists and merged recall of trained runs.

    python benchmarks/dcm_gap.py NAME --config configs/dcm.yaml --runs runs/dcm/seed_0 runs/dcm/seed_1 [-- OVERRIDES]
    python benchmarks/dcm_gap.py NAME --config configs/dcm.yaml --fit 0 1 2 [-- OVERRIDES]
    python benchmarks/dcm_gap.py --report          # benchmarks/results/dcm_gap.{json,md} from all measured NAMEs

``--fit SEEDS`` first trains a variant (the config plus ``OVERRIDES``) once per seed into
``runs/dcm_gap/NAME/seed_N`` exactly as ``compare --seeds`` does (``fit`` then ``test`` of the newest
``epoch=*.ckpt``; a seed whose run already holds a test result card is not trained again), then measures those runs.

Each run's test checkpoint (the newest ``epoch=*.ckpt``, the one ``compare`` tests) is loaded into the model the
config builds (``OVERRIDES`` as given to ``fit``, e.g. ``--model.init_args.queries.init_args.history_field=keep``)
and evaluated on the test users with the framework's own pieces (the ``test`` loop, ``RetrievalEvaluator.retrieve``,
the ``round_robin`` / ``score`` mergers, ``interest_similarity``). Measured per run, then averaged over the runs:

- ``served_rr@k``: the table's number (round-robin merge of the served interests, ``serving_rule``);
- ``all_rr@k``: the same over every valid interest (``serving_rule: all``); ``served_score@k``: score merge;
- ``served_mass@k``: the served interests merged by ``weighted_budget`` (list shares by routing mass);
  ``heaviest_alone@k``: the interest with the largest routing mass as the only list;
- ``slot<j>@k``: recall of interest j's own top-k, over the users whose interest j is valid;
  ``slot0_alone@k``: interest 0's top-k as the user's only list (every user);
- ``union_served@k`` / ``union_all@k``: a target counts if any served / valid interest's own top-k holds it
  (the max-over-embeddings recall); ``union_*_size``: distinct items in those lists (compare with
  ``single@<size>`` of a one-query model, its recall at that depth);
- ``no_interest@k``: one query per user from the same user tower with the interest field zeroed (what the user id
  and, with ``history_field: keep``, the pooled history retrieve without any interest);
- ``sim_interests`` / ``sim_queries``: mean pairwise cosine of a user's valid interests before / after the user
  tower (1 = collapsed);
- ``valid`` / ``served``: interests per user.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from _training import build_from_config

from lightning_retrieval.arrays import take_rows
from lightning_retrieval.callbacks.base import RetrievalCallback, evaluation_mode
from lightning_retrieval.data.preparation import sorted_member
from lightning_retrieval.metrics.interests import interest_similarity
from lightning_retrieval.retrieval.evaluator import RetrievalEvaluator
from lightning_retrieval.retrieval.index import ExactIndex
from lightning_retrieval.retrieval.merging import RoundRobinMerger, ScoreMerger, WeightedBudgetMerger, first_occurrences

from _common import RESULTS, write_result

SINGLE_DEPTHS = (50, 100, 150, 200)


class QueryCollector(RetrievalCallback):
    """Test-loop callback: every test user's valid queries before the serving rule, the served ones and, for
    interest queries, the interests before the user tower; the corpus vectors at the end."""

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        rows = {"eval_row": outputs["eval_row"], "served": outputs["user_valid"]}
        queries = pl_module.queries
        with evaluation_mode(pl_module):
            if hasattr(queries, "all_queries"):
                every = queries.all_queries(pl_module, batch)
                interests, valid, _ = queries.interest_vectors(pl_module, batch)
                rows.update(vectors=every.vectors, valid=every.valid, interests=interests, interest_valid=valid)
                # the same tower with the interest field zeroed: what the user's other fields alone retrieve
                rows["no_interest"] = pl_module.encode_users(batch, torch.zeros_like(interests[:, :1]))[:, 0]
                if every.weights is not None:
                    rows["mass"] = every.weights
            else:
                rows.update(vectors=outputs["user_embeddings"], valid=outputs["user_valid"])
        self._collect({"user_embeddings": rows.pop("vectors"), **rows})

    def on_test_epoch_end(self, trainer, pl_module):
        self.collected = self._gathered(trainer, pl_module)
        self.items = self.corpus_vectors(trainer, pl_module, "test")


def hits_of(items: np.ndarray, rows: np.ndarray, target_keys: np.ndarray, n_items: int) -> np.ndarray:
    """``[R, depth]`` bool: which retrieved ``items`` are targets of their user ``rows [R]``."""
    return sorted_member(rows[:, None] * n_items + items, target_keys) & (items >= 0)


def measure_run(config: str, run_dir: Path, overrides: list[str], depth: int) -> dict[str, float]:
    ckpts = sorted(run_dir.rglob("epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise SystemExit(f"{run_dir}: no epoch=*.ckpt checkpoint")
    model, datamodule = build_from_config(config, overrides)
    collector = QueryCollector()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[collector],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(model, datamodule=datamodule, ckpt_path=str(ckpts[-1]), verbose=False)
    out = collector.collected
    eval_set = datamodule.evaluation_set("test")
    rows = out["eval_row"]
    targets, exclude = take_rows(eval_set.targets, rows), take_rows(eval_set.exclude, rows)
    vectors, valid, served = out["user_embeddings"], out["valid"].astype(bool), out["served"].astype(bool)
    n_users, k = valid.shape
    index = ExactIndex().build(collector.items)
    n_items = datamodule.num_items
    target_keys = targets.keys(n_items)
    n_targets = np.maximum(targets.lengths, 1)
    evaluator = RetrievalEvaluator(ks=[depth], metrics=[])
    result: dict[str, float] = {"users": float(n_users), "checkpoint": str(ckpts[-1])}

    if k == 1:  # one query per user: recall at several depths, to set against a union's size
        deepest = max(*SINGLE_DEPTHS, depth)
        items, _, _ = evaluator.retrieve(index, vectors[:, 0], exclude, deepest)
        hits = hits_of(items, np.arange(n_users), target_keys, n_items)
        for d in sorted({depth, *SINGLE_DEPTHS}):
            result[f"single@{d}"] = float((hits[:, :d].sum(1) / n_targets).mean())
        return result

    # one search per valid interest, each excluding its user's seen items -> grid [U, K, depth]
    users, slots = np.nonzero(valid)
    found, scores, _ = evaluator.retrieve(index, vectors[users, slots], take_rows(exclude, users), depth)
    grid = np.full((n_users, k, depth), -1, dtype=np.int64)
    grid_scores = np.full((n_users, k, depth), -np.inf, dtype=np.float32)
    grid[users, slots], grid_scores[users, slots] = found, scores
    user_rows = np.arange(n_users)

    def recall(items: np.ndarray) -> np.ndarray:  # [U, M] candidate lists (may repeat) -> [U] recall
        fresh = first_occurrences(items)
        return (hits_of(items, user_rows, target_keys, n_items) & fresh).sum(1) / n_targets

    for name, mask in (("served", served), ("all", valid)):
        merged, _ = RoundRobinMerger().merge(grid, grid_scores, mask, depth)
        result[f"{name}_rr@{depth}"] = float(recall(merged).mean())
        union = np.where(mask[:, :, None], grid, -1).reshape(n_users, -1)
        result[f"union_{name}@{depth}"] = float(recall(union).mean())
        result[f"union_{name}_size"] = float(first_occurrences(union).sum(1).mean())
    merged, _ = ScoreMerger().merge(grid, grid_scores, served, depth)
    result[f"served_score@{depth}"] = float(recall(merged).mean())
    if "mass" in out:  # the paper's serving budget: shares of the list by routing mass
        mass = np.where(valid, out["mass"], 0.0)
        merged, _ = WeightedBudgetMerger().merge(grid, grid_scores, served, depth, weights=mass)
        result[f"served_mass@{depth}"] = float(recall(merged).mean())
        heaviest = np.where(valid, mass, -1.0).argmax(1)
        result[f"heaviest_alone@{depth}"] = float(recall(grid[user_rows, heaviest]).mean())
        result["heaviest_is_slot0"] = float((heaviest == 0).mean())
    result[f"slot0_alone@{depth}"] = float(recall(grid[:, 0]).mean())
    if "no_interest" in out:
        items, _, _ = evaluator.retrieve(index, out["no_interest"], exclude, depth)
        result[f"no_interest@{depth}"] = float(recall(items).mean())
    for j in range(k):
        on = valid[:, j]
        per_user = recall(np.where(on[:, None], grid[:, j], -1))
        result[f"slot{j}@{depth}"] = float(per_user[on].mean()) if on.any() else float("nan")
        result[f"slot{j}_users"] = float(on.mean())
    result["valid"] = float(valid.sum(1).mean())
    result["served"] = float(served.sum(1).mean())
    result["sim_queries"] = float(np.nanmean(interest_similarity(vectors, valid)))
    if "interests" in out:
        result["sim_interests"] = float(np.nanmean(interest_similarity(out["interests"], out["interest_valid"])))
    return result


def fit_variant(name: str, config: str, seeds: list[int], overrides: list[str]) -> list[Path]:
    """``runs/dcm_gap/NAME/seed_N`` for every seed, trained and tested with the ``lightning-retrieval`` CLI."""
    from lightning_retrieval.cli import main as lightning_retrieval

    runs = []
    for seed in seeds:
        run_dir = Path("runs/dcm_gap") / name / f"seed_{seed}"
        runs.append(run_dir)
        if list(run_dir.rglob("result_card_test.json")):
            continue
        common = [
            "--config",
            config,
            f"--seed_everything={seed}",
            f"--trainer.default_root_dir={run_dir}",
            "--trainer.enable_progress_bar=false",
            *overrides,
        ]
        lightning_retrieval(["fit", *common])
        ckpt = sorted(run_dir.rglob("epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)[-1]
        lightning_retrieval(["test", *common, "--ckpt_path", str(ckpt)])
    return runs


def load_results() -> dict:
    path = RESULTS / "dcm_gap.json"
    return json.loads(path.read_text()).get("runs", {}) if path.exists() else {}


def report(entries: dict) -> str:
    """Markdown: one row per measured NAME (means over its runs), one column per measure."""
    columns: list[str] = []
    for entry in entries.values():
        columns += [c for c in entry["mean"] if c not in columns and c not in ("users",)]
    lines = [
        "| name | runs | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for name, entry in entries.items():
        cells = [f"{entry['mean'][c]:.4f}" if c in entry["mean"] else "" for c in columns]
        lines.append(f"| {name} | {len(entry['runs'])} | " + " | ".join(cells) + " |")
    return "Per-slot, union-of-lists and merged test recall (`benchmarks/dcm_gap.py`; means over runs).\n\n" + (
        "\n".join(lines)
    )


def main() -> None:
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", help="row name in the result file")
    parser.add_argument("--config", help="the runs' config")
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="run directories (one per seed)")
    parser.add_argument("--fit", nargs="*", type=int, default=None, help="train these seeds of the variant first")
    parser.add_argument("--depth", type=int, default=50, help="k of every list")
    parser.add_argument("--report", action="store_true", help="only rewrite the result files from the JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.report:
        entries = load_results()
    else:
        if not (args.name and args.config and (args.runs or args.fit)):
            parser.error("give NAME --config CONFIG --runs DIR ... or --fit SEED ... (or --report)")
        if args.fit:
            args.runs = fit_variant(args.name, args.config, args.fit, overrides)
        runs = {str(r): measure_run(args.config, r, overrides, args.depth) for r in args.runs}
        keys = [c for c in next(iter(runs.values())) if c != "checkpoint"]
        mean = {c: float(np.mean([r[c] for r in runs.values()])) for c in keys}
        entries = load_results()  # read just before writing: other measurements may have finished meanwhile
        entries[args.name] = {"config": args.config, "overrides": overrides, "runs": runs, "mean": mean}
        print(json.dumps({args.name: mean}, indent=1))
    write_result("dcm_gap", {"runs": entries}, report(entries))


if __name__ == "__main__":
    main()
