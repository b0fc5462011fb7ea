"""The retriever artefact's manifest: what the folder holds and how to serve it, checked before anything loads.

``manifest.json`` names the format and its version, the versions of the packages that wrote it, the resolved
training config, and everything serving must reproduce from the evaluation: embedding width, metric, index type
and parameters, corpus size, serving rule, merger, topic filter, history window and seen-item exclusion.
Loading refuses a missing or garbled manifest, another format, a newer format version, or a missing or mistyped
field, with an error that names the file and the field.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from lightning_retrieval.errors import LightningRetrievalError

FORMAT = "lightning-retrieval/retriever"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"

# artefact files (relative to the folder)
# item_id (original), vector [D] float32, topics (original names); with history_item_features (history_space: items)
# also dense [Fi] float32 and feature_<name> id bags of the item side features: the item tower's inputs
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"  # user_id (original), dense [Fu] float32, followed_topics (original names)
INDEX_FILE = "index.faiss"  # faiss.write_index of the CPU index (absent for exact_torch: rebuilt from the vectors)
INDEX_IDS_FILE = "index_ids.npy"  # [C] int64: row of items.parquet for each index row
USER_MODEL_FILE = "user_model.json"  # {class_path, init_args} of the model, rebuilt through the registry
USER_STATE_FILE = "user_model.pt"  # state_dict (tensors only), loaded with weights_only=True

# field -> expected JSON type(s); a missing or mistyped field is refused by name
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "versions": dict,
    "config": dict,
    "model": dict,
    "embedding_dim": int,
    "metric": str,
    "index": dict,
    "corpus_size": int,
    "catalogue_size": int,
    "serving_rule": (str, type(None)),
    "merger": dict,
    "topic_filter": dict,
    "max_history": int,
    "exclude_seen": bool,
    "topic_names": list,
    "anonymous_user": str,
}
INDEX_FIELDS: dict[str, type | tuple[type, ...]] = {
    "type": str,
    "init_args": dict,
    "file": (str, type(None)),
    "exact": bool,
}


class ArtefactError(LightningRetrievalError, ValueError):
    """A retriever folder that cannot be loaded as it is (the message names the file and the field)."""


class ServingRequestError(LightningRetrievalError, ValueError):
    """A request the retriever cannot answer as given (unknown item, user feature or topic)."""


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour the artefact depends on."""
    out = {"python": platform.python_version()}
    for name in ("lightning-retrieval", "torch", "torchrec", "faiss-cpu", "faiss-gpu", "numpy", "pyarrow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    import faiss

    out["faiss"] = str(getattr(faiss, "__version__", "unknown"))
    return out


def write_manifest(folder: Path, fields: dict) -> Path:
    """Write ``manifest.json`` (format and version added); the fields are checked as a loader would."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": package_versions(), **fields}
    check_manifest(manifest, folder / MANIFEST_FILE)
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, default=_json_default))
    return path


def read_manifest(folder: str | Path) -> dict:
    """The checked manifest of a retriever folder; :class:`ArtefactError` if it cannot be served."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtefactError(f"{folder} is not a directory (expected a folder written by `lightning-retrieval export`)")
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ArtefactError(f"{path} is missing: {folder} is not a retriever folder (or is incomplete)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtefactError(f"{path} is not valid JSON (garbled or truncated): {err}") from err
    if not isinstance(manifest, dict):
        raise ArtefactError(f"{path} must hold a JSON object, got {type(manifest).__name__}")
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest: dict, path: Path) -> None:
    if manifest.get("format") != FORMAT:
        raise ArtefactError(f"{path}: field 'format' is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise ArtefactError(
            f"{path}: field 'format_version' is {version!r}; this lightning-retrieval reads format versions "
            f"1..{FORMAT_VERSION} (an artefact from a newer release needs that release)"
        )
    _check_fields(manifest, REQUIRED_FIELDS, path, "")
    _check_fields(manifest["index"], INDEX_FIELDS, path, "index.")
    for key in ("type", "init_args"):
        if key not in manifest["merger"]:
            raise ArtefactError(f"{path}: field 'merger.{key}' is missing")
    if manifest["metric"] != "inner_product":
        raise ArtefactError(f"{path}: field 'metric' is {manifest['metric']!r}; only 'inner_product' is served")
    if manifest["embedding_dim"] < 1 or manifest["corpus_size"] < 1:
        raise ArtefactError(f"{path}: fields 'embedding_dim' and 'corpus_size' must be >= 1")


def _check_fields(node: dict, fields: dict, path: Path, prefix: str) -> None:
    for name, kind in fields.items():
        if name not in node:
            raise ArtefactError(f"{path}: field '{prefix}{name}' is missing")
        value = node[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise ArtefactError(
                f"{path}: field '{prefix}{name}' must be {expected}, got {type(value).__name__} ({value!r:.60})"
            )


def _json_default(value):
    """numpy scalars and paths in the resolved config."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
