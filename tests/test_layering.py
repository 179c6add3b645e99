"""The package's rooms import only rooms below them (docs/architecture.md): every ``import`` in
every module counts, also those inside functions (a lazy import is no way around a layer)."""
import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "gluon_rcnn"

# room -> the rooms it may import (besides itself and "utils", added below). Lower rooms know nothing of higher ones.
ALLOWED = {
    # file writing and the checkpoint reader (gluon_rcnn.utils.io): below everything, every room may use it
    "utils": set(),
    "structures": set(),
    # the publishers' rules (small choice objects) and the profiles that name one choice per rule
    "rules": {"structures"},
    "profiles": {"rules", "structures"},
    "config": {"profiles", "rules"},
    "download": set(),
    "nn": {"structures"},
    "preprocess": {"structures", "rules"},
    "backbone": {"nn", "structures", "rules"},
    "rpn": {"nn", "structures", "rules"},
    "roi_heads": {"nn", "structures", "rules"},
    "detector": {"nn", "structures", "rules", "preprocess", "backbone", "rpn", "roi_heads"},
    "builders": {"config", "profiles", "rules", "nn", "structures", "preprocess", "backbone", "rpn", "roi_heads",
                 "detector"},
    "data": {"structures", "preprocess", "config", "profiles", "rules"},
    "viz": {"structures"},
    # the zoo's architecture check: builds models from configs
    "zoo_check": {"config", "profiles", "rules", "nn", "structures", "preprocess", "backbone", "rpn", "roi_heads",
                  "detector", "builders"},
    "convert": {"config", "profiles", "rules", "nn", "structures", "preprocess", "backbone", "rpn", "roi_heads",
                "detector", "builders", "download"},
    "engine": {"config", "profiles", "rules", "nn", "structures", "preprocess", "backbone", "rpn", "roi_heads",
               "detector", "builders", "data", "viz", "convert"},
    # radio astronomy (the `radio` extra): uses the detection library, never used by its core; its notebook API
    # (radio/api.py find_sources) builds zoo models by name
    "radio": {"config", "profiles", "rules", "structures", "preprocess", "data", "viz", "model_zoo"},
    "model_zoo": {"config", "profiles", "rules", "nn", "structures", "preprocess", "backbone", "rpn", "roi_heads",
                  "detector", "builders", "convert", "download", "zoo_check"},
    "__init__": {"model_zoo", "config"},
    "cli": {"config", "profiles", "rules", "nn", "structures", "preprocess", "backbone", "rpn", "roi_heads",
            "detector", "builders", "data", "viz", "convert", "engine", "model_zoo", "zoo_check", "__init__",
            "download", "radio"},
}
ALLOWED = {room: below | ({"utils"} if room != "utils" else set()) for room, below in ALLOWED.items()}


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


def _module_of(target: tuple[str, ...]) -> tuple[str, ...] | None:
    """The package module an import names: the longest prefix of ``target`` that is a file or a package
    (``gluon_rcnn.backbone.resnet.ResNet`` -> ``gluon_rcnn.backbone.resnet``)."""
    for n in range(len(target), 0, -1):
        base = PKG.parent.joinpath(*target[:n])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return target[:n]
    return None


def import_cycles() -> list[list[str]]:
    """Every import cycle between the package's modules, each as ``[a, b, ..., a]``.

    An edge a -> b is an ``import``/``from ... import`` of module b anywhere in a, at the top or inside a
    function: a lazy import that closes a circle only moves the failure from import time to call time and
    still ties the two modules together. Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``;
    those implied edges are left out (a package's ``__init__`` importing its own submodules is no circle),
    an explicit import of a package (``from ..backbone import X``) is an edge to its ``__init__``."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        me = ".".join(_module_parts(path))
        edges = graph.setdefault(me, set())
        for _, target in _imports(path):
            module = _module_of(target)
            if module is not None and ".".join(module) != me:
                edges.add(".".join(module))
    # Tarjan's strongly connected components; each component of more than one module holds a cycle
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_shortest_cycle(graph, comp[0], set(comp)) for comp in components]


def _shortest_cycle(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str]:
    """A shortest path start -> ... -> start inside one strongly connected component (breadth first)."""
    prev, frontier = {}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[0] != start:
                        path.insert(0, prev[path[0]])
                    return path + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def test_no_import_cycle_between_modules():
    """The room table above is per folder; this is per module: no module imports (directly or through
    others, lazily or not) a module that imports it back."""
    cycles = import_cycles()
    assert not cycles, "import cycles between modules:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles(tmp_path, monkeypatch):
    """import_cycles() on a made-up package: a lazy (function-level) import closing a circle is found."""
    pkg = tmp_path / "gluon_rcnn"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("from .b import g\n")
    (pkg / "sub" / "b.py").write_text("def g():\n    from gluon_rcnn.sub.a import f\n")
    (pkg / "c.py").write_text("from .sub import f\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    assert import_cycles() == [["gluon_rcnn.sub.a", "gluon_rcnn.sub.b", "gluon_rcnn.sub.a"]]
    (pkg / "sub" / "b.py").write_text("def g():\n    pass\n")
    assert import_cycles() == []


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
