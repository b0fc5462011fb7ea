"""Write a retriever folder from a trained model: item vectors, the configured index, the user side, a manifest.

:func:`export_from_config` builds the datamodule, the model and the callbacks from the config exactly as
``lightning-retrieval test`` would (the same CLI parser), loads the checkpoint's weights (safely, checked against
the configured model) and calls :func:`export_retriever`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from lightning_retrieval.callbacks.base import evaluation_mode
from lightning_retrieval.callbacks.conditional_evaluation import ConditionalEvaluation
from lightning_retrieval.callbacks.retrieval_evaluation import RetrievalEvaluation
from lightning_retrieval.data.preparation import CSR
from lightning_retrieval.registry import resolve
from lightning_retrieval.retrieval.index import ExactIndex, IndexBackend
from lightning_retrieval.retrieval.merging import RoundRobinMerger
from lightning_retrieval.serving.index_io import component_args, registry_name, save_index
from lightning_retrieval.serving.manifest import ITEMS_FILE, USERS_FILE, ArtefactError, write_manifest
from lightning_retrieval.serving.user_side import NOT_EXPORTABLE, reads_history_items, save_user_model

SERVING_STAGE = "predict"  # item features see every interaction, as in `predict`


def find_key(config, key: str):
    """The first value of ``key`` anywhere in a nested config (None if absent)."""
    if isinstance(config, dict):
        if key in config:
            return config[key]
        for value in config.values():
            found = find_key(value, key)
            if found is not None:
                return found
    elif isinstance(config, list):
        for value in config:
            found = find_key(value, key)
            if found is not None:
                return found
    return None


def _names_column(csr: CSR, names: np.ndarray) -> pa.Array:
    """A list<string> column: row r holds the names of ``csr.row(r)``."""
    values = pa.array([str(n) for n in names[csr.values]] if csr.values.size else [], type=pa.string())
    return pa.ListArray.from_arrays(pa.array(csr.offsets.astype(np.int32)), values)


def _ids_column(csr: CSR) -> pa.Array:
    """A list<int64> column: row r holds ``csr.row(r)``."""
    return pa.LargeListArray.from_arrays(pa.array(csr.offsets), pa.array(csr.values, type=pa.int64()))


def _vectors_column(vectors: np.ndarray) -> pa.Array:
    """Rows of ``vectors [N, D]`` as a fixed-size list column (a plain list column when D = 0)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    values = pa.array(vectors.reshape(-1), type=pa.float32())
    if vectors.shape[1] == 0:
        return pa.ListArray.from_arrays(pa.array(np.zeros(len(vectors) + 1, dtype=np.int32)), values)
    return pa.FixedSizeListArray.from_arrays(values, vectors.shape[1])


def corpus_vectors(model, datamodule, stage: str = SERVING_STAGE, batch_size: int = 8192) -> np.ndarray:
    """Item-tower vectors ``[N, D]`` of every item, in item order (as the evaluation callbacks embed them)."""
    device = model.device  # a LightningModule knows it, also without parameters (popularity)
    with evaluation_mode(model):
        chunks = [
            model.embed_items({k: v.to(device) for k, v in batch.items()}).float().cpu()
            for batch in datamodule.corpus_batches(stage, batch_size)
        ]
    return torch.cat(chunks).numpy()


def _fresh_index(index: IndexBackend) -> IndexBackend:
    """An unbuilt copy of the evaluation's index backend (same type and parameters)."""
    return resolve("index", registry_name(index))(**component_args(index))


def export_retriever(
    model,
    datamodule,
    output: str | Path,
    model_config: dict,
    config: dict | None = None,
    evaluation: RetrievalEvaluation | None = None,
    conditional: ConditionalEvaluation | None = None,
    stage: str = SERVING_STAGE,
    overwrite: bool = False,
) -> Path:
    """Write the retriever folder ``output`` and return it.

    Args:
        model: the trained model; datamodule: its data (ids, topics, user features, history window).
        model_config: the model's ``{class_path, init_args}`` from the resolved config (rebuilt at load).
        config: the whole resolved config (stored in the manifest).
        evaluation: the config's ``retrieval_evaluation`` callback: its index, merger and serving corpus are used
            (default: exact index over every item, round-robin merger).
        conditional: the config's ``conditional_evaluation`` callback: its topic filter is used for topic
            requests (default ``prefilter``), and its index when there is no ``evaluation``.
        stage: whose interactions the item features (counts) see; ``predict`` = all.
        overwrite: replace an existing non-empty ``output``.
    """
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise ArtefactError(f"{output} exists and is not empty; choose another folder or pass overwrite")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    datamodule.setup("predict")
    data = datamodule.data
    vectors = corpus_vectors(model, datamodule, stage)
    configured = evaluation if evaluation is not None else conditional  # whose index the config set
    index = _fresh_index(configured.index) if configured is not None else ExactIndex(use_gpu=False)
    merger = evaluation.merger if evaluation is not None else RoundRobinMerger()
    corpus = getattr(evaluation, "corpus", None)
    if corpus is not None:  # the serving corpus from every interaction (the evaluation uses those before its stage)
        rows, _ = corpus.build(data.item, data.timestamp, data.num_items, data.item_signature)
    else:
        rows = np.arange(data.num_items)
    index.build(vectors[rows])
    history_items = reads_history_items(model) or bool(getattr(datamodule, "history_item_features", False))
    # the item tower's inputs, for queries that embed the request's history items with it (history_space: items)
    item_side = (getattr(getattr(datamodule, "side_features", None), "items", None) or {}) if history_items else {}
    item_inputs = {"dense": _vectors_column(data.item_dense)} if history_items else {}
    pq.write_table(
        pa.table(
            {
                "item_id": pa.array(data.item_ids),
                "vector": _vectors_column(vectors),
                "topics": _names_column(data.item_topics, data.topic_names),
                **item_inputs,
                **{f"feature_{name}": _ids_column(f.ids) for name, f in item_side.items()},
            }
        ),
        output / ITEMS_FILE,
    )
    side = getattr(getattr(datamodule, "side_features", None), "users", None) or {}
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(data.user_ids),
                "dense": _vectors_column(data.user_dense),
                "followed_topics": _names_column(data.user_topics, data.topic_names),
                **{f"feature_{name}": _ids_column(f.ids) for name, f in side.items()},
            }
        ),
        output / USERS_FILE,
    )
    index_entry = save_index(index, output, rows)
    user_fields = save_user_model(model, model_config, output)
    if conditional is not None:
        topic_filter = {
            "mode": conditional.filter,
            "overfetch": conditional.overfetch,
            "streaming_step": conditional.streaming_step,
            "streaming_budget": conditional.streaming_budget,
            "source": "conditional_evaluation callback",
        }
    else:
        topic_filter = {"mode": "prefilter", "source": "default (the config has no conditional_evaluation callback)"}
    queries = (model_config.get("init_args") or {}).get("queries")
    write_manifest(
        output,
        {
            "config": config or {"model": model_config},
            "model": {
                "class_path": model_config["class_path"],
                "queries": queries.get("class_path") if isinstance(queries, dict) else queries,
                "user_side": "state_dict + constructor config (torch.export / TorchScript do not apply: see "
                "user_side_not_exportable)",
            },
            "user_side_not_exportable": NOT_EXPORTABLE,
            "embedding_dim": int(vectors.shape[1]),
            "metric": "inner_product",
            "index": index_entry,
            "corpus_size": int(len(rows)),
            "catalogue_size": int(data.num_items),
            "corpus": registry_name(corpus) if corpus is not None else "every item",
            "serving_rule": find_key(model_config, "serving_rule"),
            "merger": {"type": registry_name(merger), "init_args": component_args(merger)},
            "topic_filter": topic_filter,
            "max_history": int(datamodule.max_history),
            "exclude_seen": bool(datamodule.exclude_seen),
            "item_features_stage": stage,
            "topic_names": [str(t) for t in data.topic_names],
            "has_followed_topics": bool(data.user_topics.values.size),
            "user_side_features": {name: int(f.num_embeddings) for name, f in side.items()},
            "user_side_feature_coding": {name: f.coding.to_json() for name, f in side.items() if f.coding is not None},
            "history_item_features": history_items,
            "item_side_features": {name: int(f.num_embeddings) for name, f in item_side.items()},
            **user_fields,
        },
    )
    return output


def export_from_config(
    config_files: list[str],
    ckpt_path: str | None,
    output: str | Path,
    overrides: list[str] = (),
    stage: str = SERVING_STAGE,
    overwrite: bool = False,
) -> Path:
    """Build data, model and callbacks from ``config_files`` (+ ``--key=value`` ``overrides``) as ``test`` does,
    load ``ckpt_path``'s weights and export. Without a checkpoint the model's initial weights are exported (for
    models with nothing to train, e.g. ``popularity``)."""
    from lightning_retrieval.checkpoints import check_checkpoint_matches, safe_torch_load
    from lightning_retrieval.cli import RetrievalCLI
    from lightning_retrieval.data.datamodule import RetrievalDataModule
    from lightning_retrieval.tasks.base import RetrievalModel

    args = [a for f in config_files for a in ("--config", str(f))] + ["--trainer.logger=false", *overrides]
    cli = RetrievalCLI(RetrievalModel, RetrievalDataModule, subclass_mode_model=True, run=False, args=args)
    config = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False, skip_link_targets=False))
    model_config = config.get("model") or {}
    model = cli.model
    if ckpt_path is not None:
        checkpoint = safe_torch_load(ckpt_path)
        check_checkpoint_matches(checkpoint, model, model_config, ckpt_path)
        model.load_state_dict(checkpoint["state_dict"])
    callbacks = cli.trainer.callbacks
    evaluation = next((c for c in callbacks if isinstance(c, RetrievalEvaluation)), None)
    conditional = next((c for c in callbacks if isinstance(c, ConditionalEvaluation)), None)
    return export_retriever(
        model, cli.datamodule, output, model_config, config, evaluation, conditional, stage, overwrite
    )
