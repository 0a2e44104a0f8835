"""The package's shape, read from its source, over every module of every subpackage: no
class of ours touches another's underscored attributes, and the pure layer (``_sansio``
and the other modules of pure logic) imports nothing that does I/O, nor any module of
ours that is not pure itself."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import llamacpp_adapter

PACKAGE = Path(llamacpp_adapter.__file__).parent
#: Modules of pure logic outside ``_sansio``: fed values, they return values.
PURE = {
    "_exceptions",
    "_pause",
    "_redact",
    "_types",
    "_validate",
    "_host.prefixes",
    "_host.retry",
    "_relay.codec",
    "_relay.throttle",
    "bench._audit",
    "bench._compare",
    "bench._config",
    "bench._conversations",
    "bench._load",
    "bench._slo",
    "bench._stats",
    "bench._sweep",
}
#: What the pure layer may not import: event loops, sockets, TLS, HTTP clients.
IO = {"anyio", "asyncio", "httpcore", "httpx", "selectors", "socket", "ssl", "trio", "uvloop"}


def modules() -> dict[str, Path]:
    """Every module of the package, by its dotted name under it (``_sansio.sse``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def is_pure(name: str) -> bool:
    return name == "_sansio" or name.startswith("_sansio.") or name in PURE


def _run_imports(tree: ast.AST) -> Iterator[ast.AST]:
    """The nodes of *tree* that run: those under ``if TYPE_CHECKING:`` are for the type
    checker alone."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            for other in node.orelse:
                yield other
                yield from _run_imports(other)
            continue
        yield node
        yield from _run_imports(node)


def imports(name: str, path: Path) -> set[str]:
    """What module *name* imports when it runs: foreign packages by their top name, ours
    by their dotted name under the package (``.._types`` from ``_sansio.sse`` is
    ``_types``)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in _run_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                found.add(node.module.split(".")[0])
                continue
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found |= {".".join([*base, alias.name]) for alias in node.names}
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _own_names(cls: ast.ClassDef) -> set[str]:
    """The names a class defines: its methods, class attributes and ``self.x`` ones."""
    names: set[str] = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__
    return names


def private_reaches(source: str) -> Iterator[tuple[int, str]]:
    """``obj._name`` where *obj* is not ``self`` or ``cls``, outside a class that defines
    ``_name`` itself (a classmethod building its own instance)."""
    tree = ast.parse(source)

    def visit(node: ast.AST, own: set[str]) -> Iterator[tuple[int, str]]:
        if isinstance(node, ast.ClassDef):
            own = own | _own_names(node)
        if (
            isinstance(node, ast.Attribute)
            and _is_private(node.attr)
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            and node.attr not in own
        ):
            yield node.lineno, ast.unparse(node)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, own)

    yield from visit(tree, set())


def test_the_check_finds_a_reach_into_another_class() -> None:
    source = (
        "class A:\n"
        "    def __init__(self): self._x = 1\n"
        "    @classmethod\n"
        "    def make(cls): a = cls(); a._x = 2; return a\n"
        "class B:\n"
        "    def f(self, a): return a._x + self._y\n"
    )
    assert list(private_reaches(source)) == [(6, "a._x")]


def test_no_class_touches_another_s_underscored_attributes() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {text}"
        for path in modules().values()
        for line, text in private_reaches(path.read_text())
    ]
    assert not found, "\n".join(found)


def test_the_walk_reaches_every_subpackage() -> None:
    names = modules()
    for package in ("_sansio", "_transports", "_host", "_relay", "bench", "_cli", "_local"):
        assert package in names, package
        assert any(name.startswith(f"{package}.") for name in names), package
    assert len(names) > 40


@pytest.mark.parametrize("name", sorted(name for name in modules() if is_pure(name)))
def test_the_pure_layer_imports_no_io(name: str) -> None:
    imported = imports(name, modules()[name])
    assert not imported & IO, f"{name} imports {sorted(imported & IO)}"
    ours = {module for module in imported if module in modules()}
    impure = sorted(module for module in ours if not is_pure(module))
    assert not impure, f"{name} imports {impure}, which are not pure"
    importlib.import_module(f"llamacpp_adapter.{name}")


def test_the_check_finds_io_in_a_pure_module(tmp_path: Path) -> None:
    module = tmp_path / "x.py"
    module.write_text("import anyio\nfrom .._adapter import LlamaCppHttpAdapter\n")
    assert imports("_sansio.x", module) == {"anyio", "_adapter"}
    # An import for the type checker alone does not run; one in a function does.
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import trio\nelse:\n    import h11\n"
        "def f():\n    import socket\n"
    )
    assert imports("_sansio.x", module) == {"typing", "h11", "socket"}
