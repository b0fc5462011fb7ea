"""Plugin registry: every component kind is a base class; its registered names are class attributes.

There is no second name table. jsonargparse (and so LightningCLI) already resolves ``class_path: MLPCrossing``
for imported subclasses of the annotated base class; this package adds three things on top:

1. short, lower-case names (``class_path: mlp``) read from each class's ``registry_name`` attribute,
2. imports of built-in and third-party plugin modules before any config is parsed, so their subclasses exist,
3. an error for unknown names that names the registry, lists the valid names and suggests the closest one.

A class joins a kind by subclassing the kind's base class and decorating it with :func:`register` (or just
setting ``registry_name``). Kinds are declared with :func:`component_kind` on the base class.
"""

from lightning_retrieval.registry.core import (
    ComponentInfo,
    UnknownComponentError,
    component_kind,
    components,
    kinds,
    register,
    resolve,
    retire,
)
from lightning_retrieval.registry.plugins import PLUGIN_ENTRY_POINT_GROUP, PLUGIN_PATH_ENV, load_plugins

__all__ = [
    "ComponentInfo",
    "PLUGIN_ENTRY_POINT_GROUP",
    "PLUGIN_PATH_ENV",
    "UnknownComponentError",
    "component_kind",
    "components",
    "kinds",
    "load_plugins",
    "register",
    "resolve",
    "retire",
]
