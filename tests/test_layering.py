"""The package's rooms import only rooms below them (docs/architecture.md): every ``import`` in
every module counts, also those inside functions (a lazy import is no way around a layer)."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "gluon_rcnn"

# room -> the rooms it may import (besides itself). Lower rooms know nothing of higher ones.
ALLOWED = {
    "config": set(),
    "download": set(),
    "structures": set(),
    "nn": {"structures"},
    "preprocess": {"structures"},
    "backbone": {"nn", "structures"},
    "rpn": {"nn", "structures"},
    "roi_heads": {"nn", "structures"},
    "detector": {"nn", "structures", "preprocess", "backbone", "rpn", "roi_heads"},
    "builders": {"config", "nn", "structures", "preprocess", "backbone", "rpn", "roi_heads", "detector"},
    "data": {"structures", "preprocess", "config"},
    "viz": {"structures"},
    "convert": {"config", "nn", "structures", "preprocess", "backbone", "rpn", "roi_heads", "detector", "builders"},
    "engine": {"config", "nn", "structures", "preprocess", "backbone", "rpn", "roi_heads", "detector", "builders",
               "data", "viz", "convert"},
    # radio astronomy (the `radio` extra): uses the detection library, never used by its core
    "radio": {"config", "structures", "preprocess", "data", "viz"},
    "model_zoo": {"config", "nn", "structures", "preprocess", "backbone", "rpn", "roi_heads", "detector",
                  "builders", "convert", "download"},
    "__init__": {"model_zoo", "config"},
    "cli": {"config", "nn", "structures", "preprocess", "backbone", "rpn", "roi_heads", "detector", "builders",
            "data", "viz", "convert", "engine", "model_zoo", "__init__", "download", "radio"},
}


def _room(parts: tuple[str, ...]) -> str:
    """('gluon_rcnn', 'data', 'coco') -> 'data'; ('gluon_rcnn',) -> '__init__'."""
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _module_parts(path: Path) -> tuple[str, ...]:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path):
    """(line, imported module parts) of every import of the package in ``path``."""
    me = _module_parts(path)
    package = me if path.name == "__init__.py" else me[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + (tuple(node.module.split(".")) if node.module else ())
            elif node.module and node.module.split(".")[0] == "gluon_rcnn":
                target = tuple(node.module.split("."))
            else:
                continue
            if len(target) == 1:  # `from gluon_rcnn import x` / `from .. import x`: x may be a room
                for alias in node.names:
                    sub = PKG / alias.name
                    yield node.lineno, (target + (alias.name,)) if (sub.is_dir() or sub.with_suffix(".py").is_file()) \
                        else target
            else:
                yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gluon_rcnn":
                    yield node.lineno, tuple(alias.name.split("."))


def test_rooms_import_only_lower_rooms():
    assert set(ALLOWED) >= {_room(_module_parts(p)) for p in PKG.rglob("*.py")}, "a room is missing from ALLOWED"
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        src = _room(_module_parts(path))
        for line, target in _imports(path):
            dst = _room(target)
            if dst != src and dst not in ALLOWED[src]:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {src} imports {'.'.join(target)} ({dst})")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_the_layer_table_is_a_hierarchy():
    """No two rooms may import each other (directly or through others)."""
    def reach(room, seen=None):
        seen = set() if seen is None else seen
        for r in ALLOWED[room]:
            if r not in seen:
                seen.add(r)
                reach(r, seen)
        return seen
    for room in ALLOWED:
        assert room not in reach(room), f"{room} can reach itself through the allowed imports"


def test_core_imports_without_the_radio_extra():
    """astropy, scipy, reproject and firstgalaxydata belong to the ``radio`` extra: every module outside
    gluon_rcnn.radio imports without them, and gluon_rcnn.radio says which extra to install."""
    import subprocess
    import sys
    mods = sorted({".".join(_module_parts(p)) for p in PKG.rglob("*.py") if "radio" not in _module_parts(p)})
    code = f"""
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('astropy', 'scipy', 'reproject', 'firstgalaxydata'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
for m in {mods!r}:
    importlib.import_module(m)
try:
    import gluon_rcnn.radio
except ImportError as e:
    assert "gluon_rcnn[radio]" in str(e) or "blocked" in str(e), e
    print("radio refused:", e)
else:
    raise SystemExit("gluon_rcnn.radio imported without its dependencies")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "radio refused" in r.stdout
