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
    path = Path(path)
    if path.is_dir():
        by_time = lambda paths: sorted(paths, key=lambda p: p.stat().st_mtime)  # noqa: E731
        cards = by_time(path.rglob("result_card_test.json")) or by_time(path.rglob("result_card_*.json"))
        if not cards:
            raise FileNotFoundError(f"no result_card_*.json under {path}")
        path = cards[-1]
    return json.loads(path.read_text())
