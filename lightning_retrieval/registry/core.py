"""Kinds (base classes), names (class attributes) and name resolution."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T", bound=type)

# kind name -> base class. Kinds are few and fixed by the package; names live on the classes themselves.
_KINDS: dict[str, type] = {}
# (kind, name) -> what to use instead, for names that were removed (their error says so).
_RETIRED: dict[tuple[str, str], str] = {}


class UnknownComponentError(ValueError):
    """Raised when a name is not registered in a component kind."""


def component_kind(kind: str) -> Callable[[T], T]:
    """Class decorator declaring ``cls`` as the base class of a component kind (e.g. ``"crossing"``)."""

    def decorate(cls: T) -> T:
        if kind in _KINDS and _KINDS[kind] is not cls:
            raise ValueError(f"component kind {kind!r} is already declared by {_KINDS[kind].__qualname__}")
        _KINDS[kind] = cls
        cls.component_kind = kind  # type: ignore[attr-defined]
        return cls

    return decorate


def register(name: str) -> Callable[[T], T]:
    """Class decorator giving a component its short registry name (lower case, e.g. ``"masknet"``).

    The class must subclass a kind's base class; it is found through ``__subclasses__`` like any class
    jsonargparse resolves, so registering needs no import of this package's internals beyond the base.
    """
    if not name or name != name.lower() or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"registry names are lower-case identifiers, got {name!r}")

    def decorate(cls: T) -> T:
        if not any(issubclass(cls, base) for base in _KINDS.values()):
            raise TypeError(
                f"{cls.__qualname__} subclasses no component kind; bases: "
                + ", ".join(f"{k} ({b.__qualname__})" for k, b in sorted(_KINDS.items()))
            )
        cls.registry_name = name  # type: ignore[attr-defined]
        # reject a second class claiming the same name in the same kind
        for kind in kinds_of(cls):
            clash = [c for c in _concrete_subclasses(_KINDS[kind]) if c is not cls and _own_name(c) == name]
            clash = [c for c in clash if _import_path(c) != _import_path(cls)]  # same class re-imported is fine
            if clash:
                raise ValueError(f"name {name!r} in registry {kind!r} is already taken by {_import_path(clash[0])}")
        return cls

    return decorate


def retire(kind: str, name: str, instead: str) -> None:
    """Mark ``name`` as removed from ``kind``: resolving it raises an error that says ``instead``."""
    _RETIRED[(kind, name)] = instead


def kinds() -> dict[str, type]:
    """All declared kinds, ``{kind: base class}``."""
    _ensure_builtins()
    return dict(sorted(_KINDS.items()))


def kinds_of(cls: type) -> list[str]:
    return [k for k, base in _KINDS.items() if inspect.isclass(cls) and issubclass(cls, base)]


@dataclass(frozen=True)
class ComponentInfo:
    kind: str
    name: str
    cls: type

    @property
    def import_path(self) -> str:
        return _import_path(self.cls)

    def parameters(self) -> list[str]:
        """``name: type = default`` strings of the constructor parameters."""
        out = []
        for p in inspect.signature(self.cls.__init__).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            ann = p.annotation
            ann = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
            s = p.name if p.annotation is p.empty else f"{p.name}: {ann}"
            if p.default is not p.empty:
                s += f" = {p.default!r}"
            out.append(s)
        return out

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.strip().splitlines()[0] if doc else ""


def components(kind: str | None = None) -> list[ComponentInfo]:
    """Registered (named, concrete) components, of one kind or of all kinds."""
    _ensure_builtins()
    selected = [kind] if kind is not None else list(kinds())
    out = []
    for k in selected:
        base = _base(k)
        seen = set()
        for cls in _concrete_subclasses(base):
            name = _own_name(cls)
            if name and (name, _import_path(cls)) not in seen:
                seen.add((name, _import_path(cls)))
                out.append(ComponentInfo(k, name, cls))
    return sorted(out, key=lambda c: (c.kind, c.name))


def resolve(kind: str, name: str) -> type:
    """The class registered as ``name`` in ``kind``; also accepts a class name or a full import path."""
    base = _base(kind)
    path = resolve_class_path(base, name)
    if path is None:
        raise unknown_name_error(kind, name)
    from jsonargparse._util import import_object  # the same importer jsonargparse uses for class_path

    cls = import_object(path)
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise UnknownComponentError(f"{path} is not a {base.__qualname__} (registry {kind!r})")
    return cls


def resolve_class_path(base: type, name: str) -> str | None:
    """Import path for a short registry name or a class name among the subclasses of ``base``.

    Returns None when ``name`` is neither; dotted names are returned unchanged (they are import paths).
    """
    if "." in name:
        return name
    _ensure_builtins()
    by_short = {}
    by_class = {}
    for cls in _concrete_subclasses(base):
        if _own_name(cls):
            by_short.setdefault(_own_name(cls), set()).add(_import_path(cls))
        by_class.setdefault(cls.__name__, set()).add(_import_path(cls))
    for table in (by_short, by_class):
        if name in table:
            paths = sorted(table[name])
            if len(paths) > 1:
                raise UnknownComponentError(
                    f"name {name!r} is ambiguous, give the full import path: {', '.join(paths)}"
                )
            return paths[0]
    return None


def unknown_name_error(kind: str, name: str) -> UnknownComponentError:
    if (kind, name) in _RETIRED:
        return UnknownComponentError(f"{name!r} is no longer a name in registry {kind!r}: {_RETIRED[(kind, name)]}")
    names = [c.name for c in components(kind)]
    close = difflib.get_close_matches(name.lower(), names, n=1, cutoff=0.4)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownComponentError(
        f"unknown name {name!r} in registry {kind!r}. Available: {', '.join(names) or '(none)'}.{hint} "
        "A full import path (package.module.Class) also works; plugins are loaded from the entry-point "
        "group 'lightning_retrieval.plugins', ./plugins/ and $LIGHTNING_RETRIEVAL_PLUGIN_PATH"
    )


def kind_for_base(cls: type) -> str | None:
    """The kind whose base class is ``cls`` or an ancestor of it (most specific first)."""
    _ensure_builtins()
    matches = [(k, b) for k, b in _KINDS.items() if inspect.isclass(cls) and issubclass(cls, b)]
    if not matches:
        return None
    matches.sort(key=lambda kb: len(kb[1].__mro__), reverse=True)
    return matches[0][0]


def _base(kind: str) -> type:
    _ensure_builtins()
    if kind not in _KINDS:
        close = difflib.get_close_matches(kind, list(_KINDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownComponentError(f"unknown registry {kind!r}; registries: {', '.join(sorted(_KINDS))}.{hint}")
    return _KINDS[kind]


def _own_name(cls: type) -> str | None:
    """The name set on the class itself (not inherited from a registered parent)."""
    return cls.__dict__.get("registry_name")


def _concrete_subclasses(base: type) -> list[type]:
    out, stack = [], [base]
    while stack:
        cls = stack.pop()
        if cls is not base and not inspect.isabstract(cls) and ".<locals>." not in cls.__qualname__:
            out.append(cls)
        stack.extend(cls.__subclasses__())
    if not inspect.isabstract(base) and "registry_name" in base.__dict__:
        out.append(base)
    return out


def _import_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_BUILTINS_LOADED = False
# The module that imports every built-in component module. Loaded by name (like a plugin's entry point), so the
# registry imports no component module and component modules import the registry without an import circle.
BUILTIN_MODULE = "lightning_retrieval.components"


def _ensure_builtins() -> None:
    """Load the built-in components and the plugins once, so every subclass is known."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    import importlib

    from lightning_retrieval.registry.plugins import load_plugins

    importlib.import_module(BUILTIN_MODULE)
    load_plugins()
