"""Registry: short names, class names, import paths, plugin dir, entry points, errors, CLI integration."""

import textwrap

import pytest
import yaml
from jsonargparse import ArgumentParser

from lightning_retrieval.cli import prepare_registry
from lightning_retrieval.models.crossing import CrossingBlock, MLPCrossing
from lightning_retrieval.registry import UnknownComponentError, components, kinds, resolve
from lightning_retrieval.registry.plugins import load_plugins

from conftest import REPO, run_cli

prepare_registry()


def test_every_kind_is_declared():
    assert {
        "crossing",
        "towers",
        "tasks",
        "losses",
        "negative_samplers",
        "index",
        "datasets",
        "metrics",
        "callbacks",
        "mergers",
        "interests",
        "conditions",
        "queries",
    } <= set(kinds())


def test_short_name_class_name_and_import_path_resolve_to_the_same_class():
    assert resolve("crossing", "mlp") is MLPCrossing
    assert resolve("crossing", "MLPCrossing") is MLPCrossing
    assert resolve("crossing", "lightning_retrieval.models.crossing.mlp.MLPCrossing") is MLPCrossing


def test_unknown_name_lists_registry_choices_and_closest_match():
    with pytest.raises(UnknownComponentError) as err:
        resolve("crossing", "mpl")
    msg = str(err.value)
    assert "'crossing'" in msg and "mlp" in msg and "Did you mean 'mlp'" in msg
    with pytest.raises(UnknownComponentError, match="unknown registry 'crosing'.*Did you mean 'crossing'"):
        resolve("crosing", "mlp")


def test_import_path_of_wrong_kind_is_rejected():
    with pytest.raises(UnknownComponentError, match="is not a CrossingBlock"):
        resolve("crossing", "lightning_retrieval.retrieval.index.ExactIndex")


def test_plugin_directory_component_is_registered():
    load_plugins()
    names = [c.name for c in components("crossing")]
    assert "gated_mlp" in names
    cls = resolve("crossing", "gated_mlp")
    assert issubclass(cls, CrossingBlock) and cls.__name__ == "GatedFieldCrossing"


def test_entry_point_plugin_is_loaded(tmp_path, monkeypatch):
    pkg = tmp_path / "ep_plugin_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        from lightning_retrieval.metrics.base import RetrievalMetric
        from lightning_retrieval.registry import register

        @register("always_one")
        class AlwaysOne(RetrievalMetric):
            def compute(self, lists, k):
                return lists.hits[:, :k].sum(1) * 0 + 1.0
    """)
    )
    dist = tmp_path / "ep_plugin_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lightning_retrieval.plugins]\nalways = ep_plugin_pkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_plugins()
    assert loaded["ep_plugin_pkg"] == "entry point always"
    assert resolve("metrics", "always_one").__name__ == "AlwaysOne"


def test_broken_plugin_fails_loudly(tmp_path, monkeypatch):
    from lightning_retrieval.registry.plugins import PluginLoadError

    bad = tmp_path / "bad_plugins"
    bad.mkdir()
    (bad / "broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.setenv("LIGHTNING_RETRIEVAL_PLUGIN_PATH", str(bad))
    with pytest.raises(PluginLoadError, match="broken.py.*boom"):
        load_plugins()


def test_duplicate_name_in_a_kind_is_refused():
    from lightning_retrieval.registry import register

    with pytest.raises(ValueError, match="already taken"):

        @register("mlp")
        class AnotherMLP(CrossingBlock):  # noqa: F841
            pass


def test_jsonargparse_resolves_short_names_in_nested_factories():
    from lightning_retrieval.models.towers import Tower, TowerFactory

    parser = ArgumentParser()
    parser.add_argument("--tower", type=TowerFactory)
    cfg = parser.parse_args(
        [
            "--tower",
            yaml.safe_dump(
                {
                    "class_path": "feature_crossing",
                    "init_args": {
                        "crossing": {"class_path": "gated_mlp", "init_args": {"hidden_dims": [8]}},
                        "output_dim": 4,
                    },
                }
            ),
        ]
    )
    tower = parser.instantiate_classes(cfg).tower(3, 5)
    assert isinstance(tower, Tower) and type(tower.crossing).__name__ == "GatedFieldCrossing"
    assert tower.output_dim == 4 and tower.crossing.output_dim == 8


def test_jsonargparse_unknown_name_error_names_the_field_and_choices():
    from lightning_retrieval.models.crossing.base import CrossingFactory

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--crossing", type=CrossingFactory)
    with pytest.raises(Exception) as err:
        parser.parse_args(["--crossing", "masknett"])
    msg = str(err.value)
    assert "crossing" in msg and "unknown name 'masknett'" in msg and "Available: " in msg


def _cli(*args, cwd=REPO):
    return run_cli(*args, cwd=cwd, check=False)


def test_cli_registry_help_and_print_config():
    out = _cli("registry", "crossing")
    assert out.returncode == 0, out.stderr
    assert "mlp" in out.stdout and "gated_mlp" in out.stdout and "hidden_dims" in out.stdout

    help_out = _cli("fit", "--help")
    assert help_out.returncode == 0, help_out.stderr
    assert "retrieval (tasks)" in help_out.stdout and "movielens (datasets)" in help_out.stdout
    model_help = " ".join(_cli("fit", "--model.help", "retrieval").stdout.split())
    assert "registry names: feature_crossing (towers)" in model_help
    assert "interests (queries)" in model_help and "topic_conditions (queries)" in model_help

    printed = _cli("fit", "--config", "configs/plugin_example.yaml", "--print_config")
    assert printed.returncode == 0, printed.stderr
    cfg = yaml.safe_load(printed.stdout)
    crossing = cfg["model"]["init_args"]["user_tower"]["init_args"]["crossing"]
    assert crossing["class_path"].endswith("GatedFieldCrossing")
    assert crossing["init_args"] == {"hidden_dims": [128], "gate_hidden": 32}


def test_cli_reports_type_errors_by_field():
    out = _cli("fit", "--config", "configs/two_tower.yaml", "--model.init_args.embedding_dim", "wide")
    assert out.returncode != 0
    assert "embedding_dim" in out.stderr


# ---------------------------------------------------------------- package structure
def _import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports (anywhere in the file, function-level imports included)."""
    import ast

    root = REPO / "lightning_retrieval"
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def target(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {target(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                edges |= {
                    target(f"{base}.{a.name}") if f"{base}.{a.name}" in modules else target(base) for a in node.names
                }
        graph[module] = {e for e in edges if e and e != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(root):
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return out


def test_the_package_has_no_import_circles():
    graph = _import_graph()
    assert "lightning_retrieval.registry.core" in graph and graph["lightning_retrieval.tasks.retrieval"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can fail
    assert _cycles(graph) == []


def test_the_registry_imports_no_component_module_until_asked(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, lightning_retrieval.registry as r\n"
        "components = ('lightning_retrieval.tasks', 'lightning_retrieval.queries')\n"
        "loaded = [m for m in sys.modules if m.startswith(components)]\n"
        "assert not loaded, loaded\n"
        "assert 'retrieval' in [c.name for c in r.components('tasks')]\n"
        "assert 'combined' in [c.name for c in r.components('queries')]\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_jsonargparse_private_api_we_hook_is_still_there():
    import jsonargparse._from_config as from_config
    import jsonargparse._typehints as typehints

    from lightning_retrieval.registry.jsonargparse_hooks import check_private_api

    check_private_api(typehints, from_config)  # raises naming what changed when jsonargparse moves under us
    assert typehints.resolve_class_path_by_name.__module__ == "lightning_retrieval.registry.jsonargparse_hooks"
    assert from_config.resolve_class_path_by_name is typehints.resolve_class_path_by_name

    class Moved:  # a jsonargparse without the function
        __name__ = "jsonargparse._typehints"
        ActionTypeHint = typehints.ActionTypeHint
        get_subclass_types = typehints.get_subclass_types

    with pytest.raises(RuntimeError, match=r"_typehints.resolve_class_path_by_name is gone.*jsonargparse_hooks.py"):
        check_private_api(Moved(), from_config)
