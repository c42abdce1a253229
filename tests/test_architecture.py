"""The package's shape: no import circles between mailfilter modules (issue 20, item 2).

Every import statement counts, wherever it is: at the top, under ``TYPE_CHECKING``, inside
a function. An import deferred into a function still says the two modules need each
other; a circle means neither can be read, tested or moved without the other. Read with
`ast`, nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mailfilter"

KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()
"""Circles known and left for a bigger move, each with a comment naming the issue item that
removes it. None today."""


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package's __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def _owning_module(name: str, known: dict[str, tuple[Path, bool]]) -> str | None:
    """The longest prefix of `name` that is a module of ours (`a.b.C` -> `a.b`)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imported_modules(module: str, known: dict[str, tuple[Path, bool]]) -> Iterator[str]:
    path, is_package = known[module]
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (owner := _owning_module(alias.name, known)) is not None:
                    yield owner
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in known:  # from mailfilter.matching import store
                    yield submodule
                elif (owner := _owning_module(source, known)) is not None:
                    yield owner


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {m: set(imported_modules(m, known)) - {m} for m in known}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(group)
    return groups


def describe(group: set[str], graph: dict[str, set[str]]) -> str:
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & group))}" for m in sorted(group))


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "mailfilter.model" in graph["mailfilter.policy"]  # at the top
    assert "mailfilter.handling" in graph["mailfilter.frontend.smtp"]
    # inside a function (the backends are opened lazily) and under TYPE_CHECKING
    assert "mailfilter.matching.store_redis" in graph["mailfilter.matching.backends"]
    assert "mailfilter.settings" in graph["mailfilter.matching.backends"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [{"a", "b", "c"}]


def test_no_import_cycles_between_modules() -> None:
    graph = import_graph()
    groups = strongly_connected(graph)
    unexpected = [g for g in groups if frozenset(g) not in KNOWN_CYCLES]
    assert not unexpected, "import cycles: " + " | ".join(describe(g, graph) for g in unexpected)
    gone = KNOWN_CYCLES - {frozenset(g) for g in groups}
    assert not gone, f"known cycles no longer there, drop them from KNOWN_CYCLES: {gone}"


def _named_in(doc: str, relative: Path) -> bool:
    """Whether docs/architecture.md names a module: its path under mailfilter/ in backticks,
    or its file name on a line that names its package (`cli/` ... `hash.py`)."""
    if f"`{relative.as_posix()}`" in doc:
        return True
    package = relative.parent.as_posix() + "/"
    return any(f"`{package}`" in line and f"`{relative.name}`" in line
               for line in doc.splitlines())


def test_the_architecture_overview_names_every_module() -> None:
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [
        path.relative_to(PACKAGE).as_posix() for path in sorted(PACKAGE.rglob("*.py"))
        if not (path.name == "__init__.py" and path.parent != PACKAGE
                and f"`{path.parent.relative_to(PACKAGE).as_posix()}/`" in doc)
        and not _named_in(doc, path.relative_to(PACKAGE))
    ]
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"
    named = set(doc.split("`")[1::2])
    gone = sorted(n for n in named if n.endswith(".py") and "/" in n
                  and not (PACKAGE / n).exists() and not (PACKAGE.parent / n).exists())
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"
