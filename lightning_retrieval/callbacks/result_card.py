"""Per-run result card: metrics and the protocol that produced them, as JSON and Markdown."""

from __future__ import annotations

import json
from pathlib import Path


def write_result_card(directory: Path, stage: str, card: dict) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"result_card_{stage}.json"
    md_path = directory / f"result_card_{stage}.md"
    json_path.write_text(json.dumps(card, indent=2, default=str))
    lines = [f"# Result card: {card.get('model', '?')} ({stage})", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in card["metrics"].items()]
    lines += ["", "## Protocol", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in card["protocol"].items()]
    lines += ["", "## Data", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in card.get("data", {}).items()]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def read_result_card(path: Path) -> dict:
    """A result card file, or the newest test card under a run directory.

    A directory's ``result_card_test.json`` and ``result_card_test_conditional.json`` (from the conditional
    evaluation) are merged, so one row can show both kinds of metrics.
    """
    path = Path(path)
    if not path.is_dir():
        return json.loads(path.read_text())

    def newest(pattern: str):
        found = sorted(path.rglob(pattern), key=lambda p: p.stat().st_mtime)
        return json.loads(found[-1].read_text()) if found else None

    card = newest("result_card_test.json")
    conditional = newest("result_card_test_conditional.json")
    if card is None and conditional is None:
        card = newest("result_card_*.json")
    if card is None and conditional is None:
        raise FileNotFoundError(f"no result_card_*.json under {path}")
    if card is None:
        return conditional
    if conditional is not None:
        card["metrics"].update(conditional["metrics"])
        card["protocol"]["conditional"] = conditional["protocol"]
    return card
