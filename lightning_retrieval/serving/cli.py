"""``lightning-retrieval export`` and ``lightning-retrieval recommend``.

lightning-retrieval export --config CONFIG.yaml --ckpt_path CKPT --output DIR [--stage predict] [--overwrite]
                           [--data.KEY=VALUE ...]
lightning-retrieval recommend DIR --user-history 1,2,3 [--user-id U] [--user-feature NAME=VALUE ...] [--k 10]
                              [--topic Comedy] [--filter prefilter] [--include-seen]
"""

from __future__ import annotations

import argparse
import json
import sys


def export_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="lightning-retrieval export",
        description="Write a retriever folder (item vectors, index, user side, manifest) from a config and a "
        "checkpoint; other --KEY=VALUE arguments override the config as in `test`.",
    )
    parser.add_argument("--config", action="append", required=True, help="config file (repeatable, as in fit/test)")
    parser.add_argument("--ckpt_path", help="checkpoint whose weights are exported (omit for untrained models)")
    parser.add_argument("--output", required=True, help="folder to write (must not exist or be empty)")
    parser.add_argument(
        "--stage", default="predict", choices=["val", "test", "predict"], help="whose interactions item counts see"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    args, overrides = parser.parse_known_args(argv)
    from lightning_retrieval.serving.export import export_from_config

    out = export_from_config(args.config, args.ckpt_path, args.output, overrides, args.stage, args.overwrite)
    print(f"retriever written to {out}")


def recommend_main(argv: list[str], out=None) -> None:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="lightning-retrieval recommend", description="Top-k for one user.")
    parser.add_argument("folder", help="a folder written by `lightning-retrieval export`")
    parser.add_argument("--user-history", required=True, help="comma-separated original item ids, oldest first")
    parser.add_argument("--user-id", help="original user id (default: the anonymous user)")
    parser.add_argument(
        "--user-feature",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a user side feature's value (repeatable; a multi-valued feature's values joined by its separator); "
        "replaces the stored one",
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--topic", help="restrict to / condition on this topic (original name)")
    parser.add_argument("--filter", choices=["none", "prefilter", "postfilter", "streaming"], help="topic filter")
    parser.add_argument("--include-seen", action="store_true", help="do not exclude the history items")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    from lightning_retrieval.serving.retriever import Retriever

    retriever = Retriever.load(args.folder)
    history = retriever.parse_item_ids([t for t in args.user_history.split(",") if t.strip()])
    user_id = None
    if args.user_id is not None:
        user_id = args.user_id if retriever.user_ids.dtype == object else int(args.user_id)
    features = {"user_id": [user_id]}
    for item in args.user_feature:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            parser.error(f"--user-feature {item!r}: expected NAME=VALUE")
        features[name.strip()] = [value]
    recs = retriever.recommend(
        [history],
        args.k,
        topics=args.topic,
        exclude_seen=not args.include_seen,
        user_features=features,
        topic_filter=args.filter,
    )
    found = recs.found[0]
    ids, scores, rows = recs.item_ids[0][found], recs.scores[0][found], recs.item_rows[0][found]
    topics = [[str(retriever.topic_names[t]) for t in retriever.item_topics.row(int(r))] for r in rows]
    if args.json:
        items = [{"item_id": _plain(i), "score": float(s), "topics": t} for i, s, t in zip(ids, scores, topics)]
        answer = {"user_id": user_id, "anonymous": bool(recs.anonymous[0]), "k": args.k, "topic": args.topic}
        print(json.dumps({**answer, "items": items}), file=out)
        return
    who = f"user {user_id}" if user_id is not None else "anonymous user"
    if user_id is not None and recs.anonymous[0]:
        who += " (unknown to the model: served as the anonymous user)"
    print(
        f"top-{args.k} for {who}, history of {len(history)} items" + (f", topic {args.topic}" if args.topic else ""),
        file=out,
    )
    print(f"{'rank':>4}  {'item_id':>10}  {'score':>8}  topics", file=out)
    for rank, (i, s, t) in enumerate(zip(ids, scores, topics), 1):
        print(f"{rank:>4}  {str(i):>10}  {s:8.4f}  {'|'.join(t)}", file=out)
    if len(ids) < args.k:
        print(f"({args.k - len(ids)} slot(s) empty: fewer items qualified)", file=out)


def _plain(value):
    return value.item() if hasattr(value, "item") else value
