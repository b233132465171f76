"""The package's layering: no import circles, one module that knows fsspec, one that knows Dask."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "curation"


def _modules() -> dict[str, ast.Module]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(), str(path))
    return modules


def _imports(tree: ast.Module) -> set[str]:
    """Every module name imported anywhere in the file (top level or inside functions)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {dep for dep in _imports(tree) if dep in modules and dep != name} for name, tree in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep] if dep in path else [node, dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_subpackages_are_in_place():
    graph = _graph()
    for name in ("curation.fetch.clip", "curation.fetch.mirror", "curation.localise.model", "curation.localise.train",
                 "curation.localise.score", "curation.localise.clip_scores", "curation.outputs.assemble",
                 "curation.outputs.shards", "curation.outputs.sample_media", "curation.clip_cache",
                 "curation.summary_table", "curation.storage", "curation.pipeline"):
        assert name in graph, name


def test_curation_has_no_import_circles():
    assert _cycle(_graph()) is None, f"import circle: {' -> '.join(_cycle(_graph()))}"


def test_the_cycle_finder_finds_a_planted_circle():
    graph = _graph()
    graph["curation.clip_cache"] = graph["curation.clip_cache"] | {"curation.clip_task"}
    assert _cycle(graph) is not None


def test_only_storage_knows_fsspec_and_only_pipeline_knows_dask():
    users = {"fsspec": set(), "dask": set()}
    for name, tree in _modules().items():
        for imported in _imports(tree):
            root = imported.split(".")[0]
            if root in ("fsspec", "s3fs", "gcsfs"):
                users["fsspec"].add(name)
            if root in ("dask", "distributed"):
                users["dask"].add(name)
    assert users == {"fsspec": {"curation.storage"}, "dask": {"curation.pipeline"}}


def test_only_storage_tells_a_url_from_a_local_path():
    """OUT is opened once (`storage.run_folder`) and stages work through the object they are given; a location's
    kind is storage's business alone."""
    offenders = sorted(f"{path.relative_to(PACKAGE.parent)}:{number}"
                       for root in ("curation", "training", "manifests")
                       for path in (PACKAGE.parent / root).rglob("*.py") if path.name != "storage.py"
                       for number, line in enumerate(path.read_text().splitlines(), 1) if "is_url(" in line)
    assert not offenders, f"is_url outside curation/storage.py (use storage.run_folder / load_source): {offenders}"
