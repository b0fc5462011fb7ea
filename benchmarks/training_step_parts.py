"""Where a multi-interest training step goes: each part of the step timed alone on one batch.

    python benchmarks/training_step_parts.py [--rounds 4] [--repeats 8]

For ``multihead_attention`` and ``dynamic_routing`` (batch 512, width 64, history 50, one thread): the whole step
(forward, backward, Adam), then its parts, each forward + backward where it trains: the interest module (history
lookup included), the K-fold user-tower pass without a graph that picks each user's interest (dropout masks
drawn for all K rows), the selected interest's user-tower pass with its backward (masks replayed), the item
tower with the loss, and Adam's step. Best round's mean milliseconds of process CPU time per call.
"""

from __future__ import annotations

import argparse
import time

import torch
from _training import build_from_config

from lightning_retrieval.allocator import keep_freed_memory
from lightning_retrieval.models.dropout_replay import record_dropout, replay_dropout
from lightning_retrieval.queries.selected_tower import hard_choice

from _common import one_thread, write_result

MODELS = ["multihead_attention", "dynamic_routing"]


def best_ms(fn, repeats: int, rounds: int) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(repeats):
            fn()
        best = min(best, (time.process_time() - start) / repeats * 1e3)
    return best


def parts(name: str, repeats: int, rounds: int) -> dict[str, float]:
    model, data = build_from_config(f"../configs/{name}.yaml")
    data.prepare_data()
    data.setup("fit")
    optimizer = model.configure_optimizers()
    batch = next(iter(data.train_dataloader()))
    model.train()
    queries = model.queries
    with torch.no_grad():
        interests, valid, _ = queries.interest_vectors(model, batch)
        items = model.embed_items(batch)
        with record_dropout(model) as masks:
            every = model.encode_users(batch, interests)
    interests.requires_grad_()
    pick = hard_choice(every, valid, items)
    users = torch.arange(len(pick))
    rows = users * interests.shape[1] + pick

    def step():
        optimizer.zero_grad()
        model.compute_loss(batch).backward()
        optimizer.step()

    def interest_module():
        queries.interest_vectors(model, batch)[0].sum().backward()

    def k_fold_pass():
        with torch.no_grad(), record_dropout(model):
            model.encode_users(batch, interests)

    def selected_pass():
        with replay_dropout(model, masks, rows):
            chosen = model.encode_users(batch, interests[users, pick][:, None])[:, 0]
        chosen.sum().backward()

    def items_and_loss():
        user = every[users, pick].clone().requires_grad_()
        model.in_batch_loss(user, batch, model.embed_items(batch)).backward()

    timed = {
        "whole step": step,
        "interest module": interest_module,
        "K-fold user tower, no graph": k_fold_pass,
        "selected user tower": selected_pass,
        "item tower + loss": items_and_loss,
        "Adam step": optimizer.step,
    }
    return {part: best_ms(fn, repeats, rounds) for part, fn in timed.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args()
    one_thread()
    torch.set_num_threads(1)
    keep_freed_memory()  # as the task's fit hook does on CPU (lightning_retrieval/allocator.py)
    results = {name: parts(name, args.repeats, args.rounds) for name in MODELS}
    names = list(next(iter(results.values())))
    lines = [
        "# Where a multi-interest training step goes",
        "",
        f"Command: `python benchmarks/training_step_parts.py --rounds {args.rounds} --repeats {args.repeats}`. "
        "One batch of 512 (width 64, history 50), one thread; each part timed alone, forward + backward where it "
        f"trains; best of {args.rounds} rounds of {args.repeats} calls, milliseconds of process CPU time. Parts "
        "are timed apart, so they need not add up to the step exactly.",
        "",
        "| part | " + " | ".join(MODELS) + " |",
        "|---|" + "---|" * len(MODELS),
    ]
    for part in names:
        lines.append(f"| {part} | " + " | ".join(f"{results[m][part]:.1f}" for m in MODELS) + " |")
    lines += [
        "",
        "The interest module includes the history lookup and its backward into the item table. The K-fold pass "
        "runs the user tower (LayerNorm per field, MLP 256-128 with dropout 0.1, projection, L2 norm) on all "
        "K = 4 interests of 512 users to pick each user's interest, drawing the dropout masks of 2,048 rows; "
        "torch-rechub's MIND and ComiRec-SA map [user, interest] with one linear layer instead of a tower.",
    ]
    md = write_result("training_step_parts", {"parts_ms": results, "args": vars(args)}, "\n".join(lines))
    print(md.read_text())


if __name__ == "__main__":
    main()
