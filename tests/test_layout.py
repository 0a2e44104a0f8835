"""The package's shape, read from its source: no class of ours touches another's
underscored attributes, and the modules with pure logic import nothing that does I/O."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import llamacpp_adapter

PACKAGE = Path(llamacpp_adapter.__file__).parent


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
        f"{path.name}:{line}: {text}"
        for path in sorted(PACKAGE.glob("*.py"))
        for line, text in private_reaches(path.read_text())
    ]
    assert not found, "\n".join(found)
