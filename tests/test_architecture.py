"""The import graph of fer-edge's own modules: no cycle, and no library module importing a
command module (issue 19).

The graph is read from the source with ``ast``, not by importing: every ``import`` and
``from ... import`` counts wherever it is written, module level or inside a function (a lazy
import is still a dependency; it only moves the failure to run time). Imports under
``if TYPE_CHECKING:`` do not run and do not count. Importing ``a.b.c`` also runs ``a`` and
``a.b`` first; those implicit edges to parent packages are not counted (every submodule has
them, and a package's ``__init__`` importing its own submodules is not a cycle at run time).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

# The packages whose sources live in their own top-level folders (pyproject.toml's package-dir);
# their subpackages are found by walking those folders.
TOP_PACKAGES = ("fer_edge", "fer_edge.train", "fer_edge.compress", "fer_edge.runtimes")


def module_files() -> dict[str, Path]:
    """Every fer-edge module name -> its source file (a package's is its ``__init__.py``)."""
    files = {}
    for top in TOP_PACKAGES:
        (folder,) = importlib.util.find_spec(top).submodule_search_locations
        for path in Path(folder).rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if not all(
                (Path(folder, *parts[:i]) / "__init__.py").is_file() for i in range(len(parts))
            ):
                continue  # not inside a package (a stray script)
            name = ".".join((top, *parts))
            files[name.removesuffix(".__init__")] = path
    return files


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Import nodes anywhere in ``tree`` except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The fer-edge modules that module ``name`` (source ``path``) imports."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            # `from pkg import sub` imports the submodule; `from mod import name` the module
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for target in targets:
            # `import a.b.c` of a module that is not ours (or a name inside one): its closest
            # fer-edge ancestor
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def command_modules() -> set[str]:
    """Command modules: the modules ``fer-edge COMMAND`` loads (``fer_edge.cli.COMMANDS``), each
    exposing ``add_arguments(parser)`` and ``run(args)``. They parse arguments and call the
    library; nothing but the CLI (by name, not by import) may depend on them."""
    from fer_edge.cli import COMMANDS

    return {module for module, _ in COMMANDS.values()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def library_to_command_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Imports of a command module by a library module: any module but the command modules
    themselves and the CLI entry points (``fer_edge.cli``, ``fer_edge.__main__``). A command
    calling another command (the pipeline runs the others) is not counted here."""
    commands = command_modules()
    return {
        (src, dst)
        for src, targets in graph.items()
        if src not in commands and src not in ("fer_edge.cli", "fer_edge.__main__")
        for dst in targets
        if dst in commands
    }


def test_the_graph_sees_every_package_and_lazy_imports():
    graph = import_graph()
    assert {"fer_edge", "fer_edge.train", "fer_edge.compress", "fer_edge.runtimes"} <= set(graph)
    # fer_edge/scoring.py imports the PyTorch loader inside a function: an edge
    assert "fer_edge.train.model_io" in graph["fer_edge.scoring"]
    assert command_modules() <= set(graph)


def test_fer_edge_modules_import_no_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles among fer-edge modules:\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_no_library_module_imports_a_command_module():
    edges = sorted(library_to_command_edges(import_graph()))
    assert not edges, "library modules importing command modules:\n" + "\n".join(
        f"{src} -> {dst}" for src, dst in edges
    )


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set(), "c": {"b"}}, []),
    ],
)
def test_cycle_finder_reports_exactly_the_modules_in_a_cycle(graph, expected):
    assert cycles(graph) == expected


def test_a_lazy_import_inside_a_function_is_an_edge(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import typing_only\n"
        "def f():\n    from .sibling import thing\n    import pkg.other.deep\n"
    )
    known = {"pkg", "pkg.mod", "pkg.sibling", "pkg.other", "pkg.typing_only"}
    assert imported_modules("pkg.mod", path, known) == {"pkg.sibling", "pkg.other"}
