"""Tables from result cards (``lightning-retrieval report``)."""

from __future__ import annotations

from pathlib import Path

from lightning_retrieval.callbacks.result_card import read_result_card

DEFAULT_COLUMNS = (
    "recall@20",
    "recall@50",
    "ndcg@50",
    "hit_rate@50",
    "mrr@50",
    "coverage@50",
    "topic_diversity@50",
    "embedding_diversity@50",
)


def results_table(run_dirs: list[str], columns=DEFAULT_COLUMNS) -> str:
    rows = []
    for run in run_dirs:
        card = read_result_card(Path(run))
        present = [c for c in columns if c in card["metrics"]]
        rows.append((Path(run).name, card, present))
    cols = [c for c in columns if any(c in present for _, _, present in rows)]
    lines = ["| run | model | stage | users | " + " | ".join(cols) + " |", "|---|---|---|---|" + "---|" * len(cols)]
    for name, card, _ in rows:
        values = [f"{card['metrics'][c]:.4f}" if c in card["metrics"] else "-" for c in cols]
        lines.append(
            f"| {name} | {card['model']} | {card['stage']} | {card['protocol']['evaluated_users']} | "
            + " | ".join(values)
            + " |"
        )
    return "\n".join(lines)


def print_report(run_dirs: list[str]) -> None:
    if not run_dirs:
        raise SystemExit("usage: lightning-retrieval report RUN_DIR [RUN_DIR ...]")
    print(results_table(run_dirs))
