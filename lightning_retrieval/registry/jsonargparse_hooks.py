"""Teach jsonargparse's class-name resolution about registry short names and give good errors.

jsonargparse resolves a ``class_path`` without dots by looking for a subclass of the annotated type with
that class name (``resolve_class_path_by_name``). We wrap that one function: after jsonargparse's own
lookup fails, a registry short name (``mlp``) is tried; if the annotated type belongs to a registry kind
and the name is still unknown, the error names the registry, its valid names and the closest match.
The help text of subclass arguments also lists the short names.

Worth keeping: jsonargparse has no public hook for name resolution, and without it every config would spell
full import paths. The private functions are checked when the hooks are installed (:func:`check_private_api`
raises naming what changed) and by ``tests/test_registry.py``.
"""

from __future__ import annotations

import inspect

from lightning_retrieval.registry import core

_installed = False


def _kinds_in(typehint, narrower: bool = False) -> list[tuple[str, type]]:
    """Kinds whose base class is (an ancestor of) a class in ``typehint``.

    With ``narrower``, also kinds whose base *subclasses* the annotated class, e.g. our callbacks kind
    for Lightning's ``list[Callback]``: their short names resolve there too, without owning its errors.
    """
    types = typehint if isinstance(typehint, tuple) else (typehint,)
    out = []
    for t in types:
        if inspect.isclass(t):
            kind = core.kind_for_base(t)
            if kind is not None:
                out.append((kind, core.kinds()[kind]))
            elif narrower:
                out += [(k, b) for k, b in core.kinds().items() if issubclass(b, t)]
    return out


def check_private_api(typehints, from_config) -> None:
    """Fail loudly (not with silently missing short names) if jsonargparse no longer has what we wrap."""
    import jsonargparse

    problems = []
    for module, name in ((typehints, "resolve_class_path_by_name"), (from_config, "resolve_class_path_by_name")):
        function = getattr(module, name, None)
        if function is None:
            problems.append(f"{module.__name__}.{name} is gone")
        elif list(inspect.signature(function).parameters)[:2] != ["cls", "name"]:
            problems.append(f"{module.__name__}.{name} no longer takes (cls, name)")
    extra_help = getattr(getattr(typehints, "ActionTypeHint", None), "extra_help", None)
    if extra_help is None or not hasattr(typehints, "get_subclass_types"):
        problems.append("jsonargparse._typehints.ActionTypeHint.extra_help / get_subclass_types are gone")
    if problems:
        raise RuntimeError(
            f"jsonargparse {jsonargparse.__version__} changed the private functions that registry short names hook "
            f"into ({'; '.join(problems)}); update lightning_retrieval/registry/jsonargparse_hooks.py or pin "
            "jsonargparse to the range in pyproject.toml"
        )


def install() -> None:
    """Idempotently install the hooks into jsonargparse."""
    global _installed
    if _installed:
        return
    import jsonargparse._from_config as from_config
    import jsonargparse._typehints as typehints

    check_private_api(typehints, from_config)
    original = typehints.resolve_class_path_by_name

    def resolve_class_path_by_name(cls, name: str) -> str:
        path = original(cls, name)
        if "." in path:
            return path
        for _, base in _kinds_in(cls, narrower=True):
            found = core.resolve_class_path(base, name)
            if found is not None:
                return found
        kinds = _kinds_in(cls)
        if kinds:
            raise core.unknown_name_error(kinds[0][0], name)
        return path

    typehints.resolve_class_path_by_name = resolve_class_path_by_name
    from_config.resolve_class_path_by_name = resolve_class_path_by_name

    original_extra_help = typehints.ActionTypeHint.extra_help

    def extra_help(self) -> str:
        text = original_extra_help(self)
        names = []
        for kind, _ in _kinds_in(
            typehints.get_subclass_types(self._typehint, also_containers=True, callable_return=True) or ()
        ):
            names += [f"{c.name} ({kind})" for c in core.components(kind)]
        return text + (", registry names: " + ", ".join(dict.fromkeys(names)) if names else "")

    typehints.ActionTypeHint.extra_help = extra_help
    _installed = True
