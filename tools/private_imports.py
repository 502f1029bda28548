"""List every import of a private name (``_name``) of one hepascope module by another:
``from hepascope.x import _y`` and ``import hepascope.x._y``. Exit 1 if any."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("core", "phantom", "engines", "stream", "train", "bench", "cli")


def private_imports(root: Path = ROOT) -> list[str]:
    """``path:line: statement`` of each private import across modules of the package."""
    found = []
    for room in ROOMS:
        for f in sorted((root / room).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                        "hepascope"):
                    parts = [*node.module.split("."), *(a.name for a in node.names)]
                elif isinstance(node, ast.Import):
                    parts = [p for a in node.names if a.name.startswith("hepascope")
                             for p in a.name.split(".")]
                else:
                    continue
                if any(p.startswith("_") and not p.startswith("__") for p in parts):
                    found.append(f"{f.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return found


if __name__ == "__main__":
    hits = private_imports()
    print("\n".join(hits) or "no private imports across modules")
    sys.exit(1 if hits else 0)
