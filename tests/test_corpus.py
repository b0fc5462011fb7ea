"""Time-decayed serving corpus: hand-computed decays, signature de-duplication, top-N, subset search."""

import numpy as np
import pytest

from lightning_retrieval.data.preparation import CSR
from lightning_retrieval.retrieval import ExactIndex, RetrievalEvaluator
from lightning_retrieval.retrieval.corpus import SubsetIndex, TimeDecayedCorpus, decayed_scores

DAY = 86_400.0


def test_decayed_scores_by_hand():
    item = np.array([0, 0, 1, 2, 2, 2])
    ts = np.array([100, 70, 100, 40, 70, 100]) * DAY  # now = day 100
    scores = decayed_scores(item, ts, 4, half_life_days=30)
    # item 0: 1 + 2^-1 ; item 1: 1 ; item 2: 2^-2 + 2^-1 + 1 ; item 3: never
    np.testing.assert_allclose(scores, [1.5, 1.0, 1.75, 0.0])
    with pytest.raises(ValueError, match="half_life_days"):
        decayed_scores(item, ts, 4, half_life_days=0)
    with pytest.raises(ValueError, match="must not precede"):
        decayed_scores(item, ts, 4, 30, now=50 * DAY)


def test_decay_reorders_a_plain_sum():
    # item 0: three old engagements (day 0); item 1: two recent ones (day 100)
    item, ts = np.array([0, 0, 0, 1, 1]), np.array([0, 0, 0, 100, 100]) * DAY
    plain, _ = TimeDecayedCorpus(half_life_days=None).build(item, ts, 2)
    decayed, scores = TimeDecayedCorpus(half_life_days=30).build(item, ts, 2)
    assert plain.tolist() == [0, 1] and decayed.tolist() == [1, 0]
    np.testing.assert_allclose(scores, [2.0, 3 * 2 ** (-100 / 30)])


def test_signature_dedup_and_top_n():
    item = np.array([0, 1, 1, 2, 3, 3, 3])
    ts = np.full(7, 10 * DAY)
    signature = np.array([7, 7, 8, 9])  # items 0 and 1 are the same content
    ids, scores = TimeDecayedCorpus(half_life_days=30).build(item, ts, 4, signature)
    assert ids.tolist() == [3, 1, 2]  # item 0 (score 1) loses to item 1 (score 2) in signature 7
    ids, _ = TimeDecayedCorpus(half_life_days=30, top_n=2, dedupe_by_signature=False).build(item, ts, 4, signature)
    assert ids.tolist() == [3, 1]
    with pytest.raises(ValueError, match="top_n"):
        TimeDecayedCorpus(top_n=0)


def test_subset_index_searches_only_the_corpus_with_global_ids():
    rng = np.random.default_rng(0)
    vectors, queries = rng.normal(size=(200, 8)).astype(np.float32), rng.normal(size=(20, 8)).astype(np.float32)
    corpus = np.sort(rng.choice(200, 60, replace=False))
    index = SubsetIndex(ExactIndex(), corpus, 200).build(vectors[corpus])
    exclude = CSR.from_pairs_unique(np.repeat(np.arange(20), 3), rng.choice(corpus, 60), 20, 200)
    items, _, _ = RetrievalEvaluator([10], metrics=[]).retrieve(index, queries, exclude, 10)
    for u in range(20):
        scores = vectors[corpus] @ queries[u]
        ranked = [c for c in corpus[np.argsort(-scores, kind="stable")] if c not in set(exclude.row(u))]
        assert items[u].tolist() == ranked[:10]
    targets = CSR.from_pairs_unique(np.arange(20), rng.choice(200, 20), 20, 200)
    result = RetrievalEvaluator([10], metrics=["recall", "coverage"]).evaluate(index, queries, targets, exclude)
    assert result.protocol["corpus_size"] == 60 and result.protocol["catalogue_size"] == 200
    assert result.metrics["coverage@10"] == pytest.approx(len(np.unique(items)) / 60)


@pytest.mark.slow
def test_evaluation_callback_indexes_the_decayed_corpus(movielens_dm):
    import lightning.pytorch as pl

    from lightning_retrieval.callbacks import RetrievalEvaluation
    from lightning_retrieval.tasks import PopularityRetrieval

    cb = RetrievalEvaluation(ks=[10, 50], corpus=TimeDecayedCorpus(half_life_days=90, top_n=1000), result_card=False)
    pl.Trainer(logger=False, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False).test(
        PopularityRetrieval(), datamodule=movielens_dm
    )
    p = cb.last_result.protocol
    assert p["corpus"] == "time_decayed" and p["corpus_size"] == 1000 and p["catalogue_size"] == 9742
    assert 0 < p["targets_outside_corpus"] < 610
    assert (cb.last_result.lists.items < 9742).all()
