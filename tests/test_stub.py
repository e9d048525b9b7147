"""The shipped type stub covers every public name of the native module."""

import ast
from pathlib import Path

import pagedcore
from pagedcore import _core


def test_every_public_native_name_is_in_the_stub():
    stub = Path(pagedcore.__file__).with_name("_core.pyi")
    tree = ast.parse(stub.read_text())
    declared = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            declared.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared.add(node.target.id)
    public = {name for name in dir(_core) if not name.startswith("_")} | {"__version__"}
    missing = sorted(public - declared - {"__version__"})
    assert not missing, f"_core.pyi lacks: {missing}"
