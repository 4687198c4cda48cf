"""The shape of the house: the import graph of ``sslvit/`` by layers, its circles, imports that run
from a lower layer up to a higher one, imports made inside functions, the longest functions and the
modules at the top of the package. Read from the code's own imports (``ast``), nothing is imported.

    python benchmarks/structure.py                       # this checkout
    python benchmarks/structure.py --root /tmp/old       # another checkout, same table
    python benchmarks/structure.py --assign sslvit.train=training sslvit.optim=training

Layers, lowest first (a module may import its own layer and the ones below):

    base (sslvit, sslvit.errors, sslvit.files, sslvit.progress, sslvit.version) < models < config < data < objectives < checkpoint
    < training, hub < evaluate, viz < cli, sslvit.__main__

The package itself (``sslvit/__init__.py``) is base: it imports only the version at run time
(``sslvit.create_model`` and the other API names resolve on first use).

An import inside a function is counted as *explained* when its line (or the line above it) carries
``# deferred: REASON``; such imports keep ``sslvit --help`` torch-free or keep an optional
library optional. Imports under ``if TYPE_CHECKING:`` are not part of the graph.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

LAYERS: list[tuple[str, ...]] = [
    ("base",),
    ("models",),
    ("config",),
    ("data",),
    ("objectives",),
    ("checkpoint",),
    ("training", "hub"),
    ("evaluate", "viz"),
    ("cli",),
]
# module (or package) -> its group; the longest matching prefix wins
GROUPS: dict[str, str] = {
    "sslvit": "base",
    "sslvit.__main__": "cli",
    "sslvit.errors": "base",
    "sslvit.files": "base",
    "sslvit.version": "base",
    "sslvit.progress": "base",
    **{f"sslvit.{name}": name for layer in LAYERS for name in layer if name != "base"},
}
DEFERRED = re.compile(r"#\s*deferred:\s*\S")


@dataclass
class Edge:
    source: str
    target: str
    line: int
    in_function: bool
    reason: bool  # carries a "# deferred: REASON" comment


@dataclass
class Function:
    name: str
    module: str
    lines: int


@dataclass
class Structure:
    modules: list[str]
    edges: list[Edge]
    functions: list[Function]
    top_level: list[str]
    groups: dict[str, str] = field(default_factory=dict)

    def group(self, module: str) -> str | None:
        """The group of ``module``: its longest listed prefix (the root package only as itself)."""
        parts = module.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in self.groups and (cut > 1 or cut == len(parts)):
                return self.groups[prefix]
        return None

    def rank(self, module: str) -> int | None:
        group = self.group(module)
        for index, layer in enumerate(LAYERS):
            if group in layer:
                return index
        return None

    def circles(self) -> list[list[str]]:
        """Strongly connected components of more than one module (every non-TYPE_CHECKING import)."""
        graph: dict[str, set[str]] = defaultdict(set)
        for edge in self.edges:
            if edge.source != edge.target:
                graph[edge.source].add(edge.target)
        return [sorted(c) for c in _components(self.modules, graph) if len(c) > 1]

    def up_imports(self) -> list[Edge]:
        """Imports from a lower layer into a higher one."""
        ups = []
        for edge in self.edges:
            low, high = self.rank(edge.source), self.rank(edge.target)
            if low is not None and high is not None and high > low:
                ups.append(edge)
        return ups

    def unplaced(self) -> list[str]:
        return [m for m in self.modules if self.rank(m) is None]

    def deferred(self) -> tuple[list[Edge], list[Edge]]:
        """(explained, unexplained) imports of sslvit modules made inside functions."""
        inside = [e for e in self.edges if e.in_function]
        return [e for e in inside if e.reason], [e for e in inside if not e.reason]

    def group_edges(self) -> Counter:
        counts: Counter = Counter()
        for edge in self.edges:
            a, b = self.group(edge.source), self.group(edge.target)
            if a != b:
                counts[(a or edge.source, b or edge.target)] += 1
        return counts


def _components(nodes: list[str], graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
                found.append(component)
    return found


def module_name(package_dir: Path, path: Path) -> str:
    parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set[str], lines: list[str]):
        self.module, self.is_package, self.known, self.lines = module, is_package, known, lines
        self.root = module.split(".")[0]
        self.depth = 0
        self.edges: list[Edge] = []
        self.functions: list[tuple[str, int]] = []
        self.names: list[str] = []

    def _target(self, name: str) -> str | None:
        """The module ``name`` refers to: itself if known, else its longest known parent."""
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            candidate = ".".join(parts[:cut])
            if candidate in self.known:
                return candidate
        return None

    def _add(self, target: str | None, node: ast.stmt) -> None:
        if target is None:
            return
        lines = self.lines[max(node.lineno - 2, 0): node.end_lineno or node.lineno]
        reason = any(DEFERRED.search(line) for line in lines)
        self.edges.append(Edge(self.module, target, node.lineno, self.depth > 0, reason))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == self.root:
                self._add(self._target(alias.name), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source.split(".")[0] != self.root:
            return
        targets = {self._target(f"{source}.{alias.name}") for alias in node.names}
        for target in sorted(t for t in targets if t):
            self._add(target, node)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.names.append(node.name)
        self.functions.append((".".join(self.names), (node.end_lineno or node.lineno) - node.lineno + 1))
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1
        self.names.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.names.append(node.name)
        self.generic_visit(node)
        self.names.pop()


def read(package_dir: Path, assign: dict[str, str] | None = None) -> Structure:
    """The structure of the package at ``package_dir`` (``.../sslvit``)."""
    paths = sorted(p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts)
    names = {module_name(package_dir, p): p for p in paths}
    # C extension modules (built from a .c source in the package) import nothing of the package
    known = set(names) | {module_name(package_dir, p) for p in package_dir.rglob("*.c")}
    edges: list[Edge] = []
    functions: list[Function] = []
    for module, path in names.items():
        text = path.read_text()
        visitor = _Imports(module, path.name == "__init__.py", known, text.splitlines())
        visitor.visit(ast.parse(text, filename=str(path)))
        edges += visitor.edges
        functions += [Function(name, module, lines) for name, lines in visitor.functions]
    top = sorted(p.stem for p in package_dir.glob("*.py") if p.stem not in ("__init__", "__main__"))
    groups = dict(GROUPS)
    groups.update(assign or {})
    return Structure(sorted(known), edges, functions, top, groups)


def report(structure: Structure, longest: int = 5) -> str:
    circles = structure.circles()
    ups = structure.up_imports()
    explained, unexplained = structure.deferred()
    lines = ["| measure | value |", "|---|---:|",
             f"| modules | {len(structure.modules)} |",
             f"| modules at the top of the package | {len(structure.top_level)} |",
             f"| imports between sslvit modules | {len(structure.edges)} |",
             f"| circles | {len(circles)} |",
             f"| imports from a lower layer up | {len(ups)} |",
             f"| imports inside functions | {len(explained) + len(unexplained)} |",
             f"| of them without a `# deferred:` reason | {len(unexplained)} |",
             f"| modules in no layer | {len(structure.unplaced())} |", ""]
    lines.append("Top-level modules: " + ", ".join(structure.top_level))
    for number, circle in enumerate(circles, 1):
        lines.append(f"Circle {number} ({len(circle)} modules): " + ", ".join(circle))
    for edge in ups:
        lines.append(f"Up: {edge.source}:{edge.line} -> {edge.target} "
                     f"({structure.group(edge.source)} -> {structure.group(edge.target)})")
    for edge in unexplained:
        lines.append(f"Deferred without a reason: {edge.source}:{edge.line} -> {edge.target}")
    for module in structure.unplaced():
        lines.append(f"In no layer: {module}")
    lines += ["", "Layers, lowest first, and the imports between packages (count):"]
    counts = structure.group_edges()
    for index, layer in enumerate(LAYERS):
        out = [f"{a}->{b} ({n})" for (a, b), n in sorted(counts.items()) if a in layer]
        lines.append(f"  {index} {' | '.join(layer)}: " + (", ".join(out) or "-"))
    lines += ["", "| longest functions | lines |", "|---|---:|"]
    for fn in sorted(structure.functions, key=lambda f: -f.lines)[:longest]:
        lines.append(f"| `{fn.module}.{fn.name}` | {fn.lines} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="a checkout holding sslvit/ (default: this one)")
    parser.add_argument("--assign", nargs="*", default=[], metavar="MODULE=GROUP",
                        help="place modules the layer table does not know (e.g. sslvit.train=training)")
    parser.add_argument("--longest", type=int, default=5, help="how many of the longest functions to list")
    args = parser.parse_args(argv)
    assign = {}
    for item in args.assign:
        module, sep, group = item.partition("=")
        if not sep or not any(group in layer for layer in LAYERS):
            parser.error(f"--assign {item!r}: want MODULE=GROUP with GROUP one of "
                         + ", ".join(g for layer in LAYERS for g in layer))
        assign[module] = group
    package = args.root / "sslvit"
    if not package.is_dir():
        parser.error(f"--root {args.root}: no sslvit/ folder there")
    print(report(read(package, assign), args.longest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
