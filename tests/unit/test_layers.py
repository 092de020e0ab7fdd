"""The package's layers, read from its own imports: each module imports only from its layer and the layers below,
the imports make no circle, and no module imports one of ipyllm's own inside a function (which would hide a
circle), but ``ipyllm/__init__.py``'s lazy hooks. Third-party imports deferred inside functions (litellm,
pandas, psycopg, ipywidgets) are not counted: deferring them keeps ``import ipyllm`` fast.

Keep this list up to date: it is the map of the house.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ipyllm"

#: Bottom to top: a module may import from its own layer and the ones above it in this list.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation: exceptions, rows, notices, the price map's names, the event loop",
     {"errors", "_usage", "_notices", "_pricemap", "_loop"}),
    ("configuration: settings, the key, the ledger's location, the environment", {"_config"}),
    ("the litellm adapter: its import, private flags, callbacks", {"_litellm"}),
    ("prices, estimates, the model list, how replies look", {"_cost", "_models", "_display"}),
    ("the call engine: arguments, retries, streaming, answers, errors, input checks, schemas",
     {"_retry", "_answers", "_explain", "_validate", "_schema", "_callrow", "_attempt", "_engine"}),
    ("the ledger and budgets: rows, holds, the cache in SQLite, PostgreSQL or memory",
     {"_store", "_spool", "_sqlschema", "_sqlfile", "_sqlite", "_pgschema", "_postgres", "_ledger", "_budget", "_records"}),
    ("the session and its one cached-call path", {"_calls", "_session"}),
    ("batches: map/amap, progress, helper processes",
     {"_progress", "_helpers", "_batchdata", "_pace", "_writer", "_rows", "_batchrun", "_batch"}),
    ("the faces: the public API, the magics, the picker, the stub server", {"_api", "_chat", "_widget", "_magics", "testing", "__init__"}),
]  # fmt: skip
LAYER_OF = {name: number for number, (_, names) in enumerate(LAYERS) for name in names}


def modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py"))


def own_imports(name: str) -> list[tuple[str, int, bool]]:
    """The ipyllm modules ``name`` imports: (module, line, whether the import sits inside a function)."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.level == 0 and child.module and child.module.split(".")[0] == "ipyllm":
                if child.module == "ipyllm":  # from ipyllm import _loop
                    found.extend((alias.name, child.lineno, in_function) for alias in child.names)
                else:
                    found.append((child.module.split(".")[1], child.lineno, in_function))
            elif isinstance(child, ast.Import):
                found.extend(
                    (alias.name.split(".")[1], child.lineno, in_function) for alias in child.names if alias.name.startswith("ipyllm.")
                )
            visit(child, inside)

    visit(tree, False)
    return found


def test_every_module_has_a_layer() -> None:
    missing = [name for name in modules() if name not in LAYER_OF]
    assert not missing, f"put these modules in a layer of LAYERS: {missing}"
    gone = sorted(set(LAYER_OF) - set(modules()))
    assert not gone, f"LAYERS names modules that are no more: {gone}"


@pytest.mark.parametrize("name", [name for name in modules() if name != "__init__"])
def test_imports_point_down_and_stay_at_module_level(name: str) -> None:
    for imported, line, in_function in own_imports(name):
        assert not in_function, f"ipyllm/{name}.py:{line} imports ipyllm.{imported} inside a function: import it at the top"
        assert LAYER_OF[imported] <= LAYER_OF[name], (
            f"ipyllm/{name}.py:{line} imports ipyllm.{imported}, a layer above it "
            f"({LAYERS[LAYER_OF[imported]][0]!r} over {LAYERS[LAYER_OF[name]][0]!r})"
        )


def test_the_imports_make_no_circle() -> None:
    graph = {name: {imported for imported, _, _ in own_imports(name) if imported != name} for name in modules()}
    done: set[str] = set()

    def walk(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for imported in sorted(graph.get(name, ())):
            walk(imported, [*path, name])
        done.add(name)

    for name in modules():
        walk(name, [])


def test_the_test_sees_a_function_level_import_and_an_import_up_a_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: a module that imports the session inside a function is caught twice."""
    (tmp_path / "_cost.py").write_text("def f():\n    from ipyllm._session import Session\n    return Session\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", tmp_path)
    assert own_imports("_cost") == [("_session", 2, True)]
    with pytest.raises(AssertionError, match="inside a function"):
        test_imports_point_down_and_stay_at_module_level("_cost")
