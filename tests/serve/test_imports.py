"""serve/ is a thin layer over lib's selection, extraction and verification: it never imports the synthesis
modules (``lib.synthesis*``, the science of synthetic data), not even lazily inside a function."""

import ast
from pathlib import Path

SERVE = Path(__file__).resolve().parents[2] / "serve"


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` / ``from ... import`` anywhere in ``path`` names (function bodies included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_serve_imports_no_synthesis_module():
    imports = {p.name: imported_modules(p) for p in sorted(SERVE.glob("*.py"))}
    assert {"app.py", "best_of_n.py", "verifier.py"} <= set(imports)
    bad = {name: sorted(m for m in mods if m.startswith("lib.synthesis")) for name, mods in imports.items()}
    assert {name: mods for name, mods in bad.items() if mods} == {}
    # what serve takes instead: the selection registry, the stated answer, the verdict parser
    assert "lib.selection" in imports["best_of_n.py"] and "lib.selection" in imports["verifier.py"]
    assert {"lib.extraction", "lib.verification"} <= imports["app.py"]
