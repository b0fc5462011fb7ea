"""Loading third-party plugins: an entry-point group (automatic) and plugin directories (only when named).

Plugin directories are imported only when named by ``$LIGHTNING_RETRIEVAL_PLUGIN_PATH`` or the CLI's
``--plugins DIR`` flag: running the CLI in a downloaded folder never executes its ``plugins/*.py``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
from pathlib import Path

from lightning_retrieval.errors import LightningRetrievalError

log = logging.getLogger(__name__)

PLUGIN_ENTRY_POINT_GROUP = "lightning_retrieval.plugins"
PLUGIN_PATH_ENV = "LIGHTNING_RETRIEVAL_PLUGIN_PATH"
_loaded: dict[str, str] = {}  # module name -> origin, for `lightning-retrieval registry`


class PluginLoadError(LightningRetrievalError, ImportError):
    pass


def plugin_directories(extra: list[str] | None = None) -> list[Path]:
    """The directories in ``$LIGHTNING_RETRIEVAL_PLUGIN_PATH`` followed by ``extra`` (e.g. ``--plugins DIR``).

    The working directory's ``./plugins`` is not searched unless named: importing a folder runs its code.
    """
    dirs = []
    named = [(e, PLUGIN_PATH_ENV) for e in os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep) if e]
    named += [(e, "--plugins") for e in extra or []]
    for entry, origin in named:
        p = Path(entry).expanduser().resolve()
        if not p.is_dir():
            raise PluginLoadError(f"{origin} names {entry!r}, which is not a directory")
        if p not in dirs:
            dirs.append(p)
    return dirs


def load_plugins(directories: list[str] | None = None) -> dict[str, str]:
    """Import every plugin module once; returns ``{module: origin}`` of all loaded plugins.

    Entry points of the ``lightning_retrieval.plugins`` group (installed packages) are always loaded;
    directories only when named by ``$LIGHTNING_RETRIEVAL_PLUGIN_PATH`` or ``directories``.

    A plugin that fails to import raises :class:`PluginLoadError` naming the plugin: a broken plugin
    must not silently disappear from the registry.
    """
    for ep in importlib.metadata.entry_points(group=PLUGIN_ENTRY_POINT_GROUP):
        if ep.value in _loaded:
            continue
        try:
            ep.load()
        except Exception as err:  # noqa: BLE001 - re-raised with the plugin's name
            raise PluginLoadError(f"plugin entry point {ep.name!r} ({ep.value}) failed to import: {err}") from err
        _loaded[ep.value] = f"entry point {ep.name}"
    for directory in plugin_directories(directories):
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            module_name = f"lightning_retrieval_plugins.{directory.name}.{path.stem}"
            if module_name in _loaded:
                continue
            _import_file(module_name, path)
            _loaded[module_name] = str(path)
    return dict(_loaded)


def _import_file(module_name: str, path: Path) -> None:
    for parent in ("lightning_retrieval_plugins", module_name.rsplit(".", 1)[0]):
        if parent not in sys.modules:
            pkg = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(parent, None, is_package=True))
            pkg.__path__ = []  # namespace-like container for plugin modules
            sys.modules[parent] = pkg
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise PluginLoadError(f"plugin file {path} failed to import: {err}") from err
