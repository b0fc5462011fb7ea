"""Teach jsonargparse's class-name resolution about registry short names and give good errors.

jsonargparse resolves a ``class_path`` without dots by looking for a subclass of the annotated type with
that class name (``resolve_class_path_by_name``). We wrap that one function: after jsonargparse's own
lookup fails, a registry short name (``mlp``) is tried; if the annotated type belongs to a registry kind
and the name is still unknown, the error names the registry, its valid names and the closest match.
The help text of subclass arguments also lists the short names.
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


def install() -> None:
    """Idempotently install the hooks into jsonargparse."""
    global _installed
    if _installed:
        return
    import jsonargparse._from_config as from_config
    import jsonargparse._typehints as typehints

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
