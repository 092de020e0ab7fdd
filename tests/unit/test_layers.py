"""The package's layers, read from its own imports: each module imports only from its layer and the layers below,
the imports make no circle, and no module imports one of ipyllm's own inside a function (which would hide a
circle), but ``ipyllm/__init__.py``'s lazy hooks. Third-party imports deferred inside functions (litellm,
pandas, psycopg, ipywidgets) are not counted: deferring them keeps ``import ipyllm`` fast.

Modules of a subpackage are named by their dotted path under ``ipyllm`` (``testing._server``); a subpackage's
``__init__.py`` by the subpackage's name (``testing``). Relative imports count as the absolute ones they stand for.

Keep this list up to date: it is the map of the house.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ipyllm"

#: Bottom to top: a module may import from its own layer and the ones above it in this list.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation: exceptions, rows, notices, the price map's names, the event loop, message parts (images, files, tables)",
     {"errors", "_usage", "_notices", "_pricemap", "_loop", "_imagesize", "_tables", "_parts", "_imagefit"}),
    ("configuration: settings, the key, the ledger's location, the environment", {"_secrets", "_locations", "_config"}),
    ("the litellm adapter: its import, private flags, callbacks", {"_litellm"}),
    ("prices, estimates, savings, prompt caching's plan, the model list, how replies look",
     {"_cost", "_batchcost", "_promptcache", "_savings", "_models", "_display"}),
    ("the call engine: arguments, retries, streaming, answers, errors, input checks, schemas",
     {"_retry", "_answers", "_explain", "_validate", "_attach", "_schema", "_callrow", "_attempt", "_engine", "_jobfile", "_batchlink"}),
    ("the ledger and budgets: rows, holds, the cache in SQLite, PostgreSQL or memory, the frames read kept",
     {"_batchledger", "_batchclaim", "_store", "_totals", "_framecodec", "_framechunks", "_framefile", "_framecache",
      "_spool", "_sqlschema", "_sqlfile", "_sqlite", "_pgschema", "_pglink", "_pgwriter", "_pgbudget", "_pgbatches", "_postgres", "_ledger",
      "_sqlbatches", "_batchrecords", "_budget", "_views", "_records"}),
    ("the session and its one cached-call path", {"_calls", "_session"}),
    ("batches: map/amap, progress, helper processes",
     {"_progress", "_helpers", "_batchdata", "_pace", "_writer", "_routes", "_rows", "_batchrun", "_batchresults", "_provider_batch",
      "_batchjob", "_batch"}),
    ("the faces: the public API, the magics, the picker, the stub server",
     {"_api", "_chat", "_pickerinfo", "_widget",
      "_prompt", "_assignments", "_usageview", "_mapcell", "_llmcall", "_magics",
      "testing._faults", "testing._replies", "testing._caching", "testing._anthropic", "testing._batches", "testing._batchroutes",
      "testing._handler", "testing._server", "testing._notebooks", "testing._cli",
      "testing", "testing.__main__", "_server", "__init__"}),
]  # fmt: skip
LAYER_OF = {name: number for number, (_, names) in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    """``_config``, ``__init__`` (the package's own), ``testing`` (a subpackage's ``__init__.py``), ``testing._server``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def module_path(name: str) -> Path:
    path = PACKAGE.joinpath(*name.split("."))
    return path.with_suffix(".py") if not path.is_dir() else path / "__init__.py"


def modules() -> list[str]:
    return sorted(module_name(path) for path in PACKAGE.rglob("*.py"))


def own_imports(name: str) -> list[tuple[str, int, bool]]:
    """The ipyllm modules ``name`` imports: (module, line, whether the import sits inside a function).

    ``from ipyllm.testing import _server`` imports the module ``testing._server``; ``from ipyllm.testing import
    StubServer`` the subpackage ``testing`` itself (its ``__init__``).
    """
    path = module_path(name)
    tree = ast.parse(path.read_text())
    known = set(modules())
    # Where a relative import starts: the package this module is in (for an __init__.py, the package itself).
    here = ["ipyllm", *path.relative_to(PACKAGE).parts[:-1]]
    found: list[tuple[str, int, bool]] = []

    def own(dotted: str) -> str | None:
        """``ipyllm.testing._server`` -> ``testing._server``, ``ipyllm`` -> ``""``; None for another package."""
        first, _, rest = dotted.partition(".")
        return rest if first == "ipyllm" else None

    def imported_from(node: ast.ImportFrom) -> list[str]:
        base = node.module or ""
        if node.level:
            base = ".".join([*here[: len(here) - node.level + 1], *([base] if base else [])])
        package = own(base)
        if package is None:
            return []
        if package == "":  # from ipyllm import _loop
            return [alias.name for alias in node.names]
        return list(dict.fromkeys(f"{package}.{a.name}" if f"{package}.{a.name}" in known else package for a in node.names))

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                found.extend((imported, child.lineno, in_function) for imported in imported_from(child))
            elif isinstance(child, ast.Import):
                found.extend((imported, child.lineno, in_function) for alias in child.names if (imported := own(alias.name)))
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


def test_the_test_reads_subpackages_and_relative_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A subpackage's modules are seen, each import is resolved to the module it names, relative ones included."""
    (tmp_path / "testing").mkdir()
    (tmp_path / "testing" / "__init__.py").write_text("from ipyllm.testing._server import StubServer\n")
    (tmp_path / "testing" / "_faults.py").write_text("")
    (tmp_path / "testing" / "_server.py").write_text(
        "from .. import _loop\nfrom ._faults import Fault\nfrom . import _faults\nfrom ipyllm.testing import Fault, StubServer\n"
        "import ipyllm._config\n\n\ndef f():\n    from .._session import Session\n    return Session\n"
    )
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", tmp_path)
    assert modules() == ["testing", "testing._faults", "testing._server"]
    assert own_imports("testing") == [("testing._server", 1, False)]
    assert own_imports("testing._server") == [
        ("_loop", 1, False),
        ("testing._faults", 2, False),
        ("testing._faults", 3, False),
        ("testing", 4, False),
        ("_config", 5, False),
        ("_session", 9, True),
    ]
    with pytest.raises(AssertionError, match="inside a function"):
        test_imports_point_down_and_stay_at_module_level("testing._server")


#: Issue 18's sizes: a module is read in one sitting, a class holds one job.
MODULE_LINES, CLASS_LINES = 500, 200


def too_big(name: str) -> list[str]:
    """What in ``name`` is over the sizes: the module's lines, and each class's lines without its docstring."""
    path = module_path(name)
    where, text = Path("ipyllm", path.relative_to(PACKAGE)).as_posix(), path.read_text()
    lines = len(text.splitlines())
    found = [f"{where} has {lines} lines"] if lines > MODULE_LINES else []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                size -= first.end_lineno - first.lineno + 1  # type: ignore[operator]
            if size > CLASS_LINES:
                found.append(f"{where}:{node.lineno} class {node.name} has {size} lines besides its docstring")
    return found


def test_no_module_over_500_lines_and_no_class_over_200() -> None:
    found = [line for name in modules() for line in too_big(name)]
    assert not found, "split these: " + "; ".join(found)


def test_the_size_check_counts_code_not_docstrings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a class of 201 lines of code is caught, and one of 200 with a long docstring is not."""
    methods = "".join(f"    def m{i}(self):\n        return {i}\n\n" for i in range(66))  # 198 lines
    documented = 'class Fine:\n    """' + "\n" * 30 + '"""\n' + methods + "    x = 1\n"  # 200 lines besides the docstring
    (tmp_path / "_big.py").write_text(documented + "\n\nclass Big:\n" + methods + "    x = 1\n    y = 2\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", tmp_path)
    assert too_big("_big") == [f"ipyllm/_big.py:{documented.count(chr(10)) + 3} class Big has 201 lines besides its docstring"]
    (tmp_path / "_long.py").write_text("x = 1\n" * 501)
    assert too_big("_long") == ["ipyllm/_long.py has 501 lines"]
