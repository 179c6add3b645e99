"""Repository hygiene: tests never load a bench/ script.

bench/ holds command-line scripts (benchmarks, comparisons with other frameworks); what tests share with
them lives in the package or in a support module under tests/ (detection_match, tensorpack_compare,
gluoncv_compare, gluoncv_weights) that the bench scripts import. A test that loaded a bench script (by
module name, by file path, or with bench/ put on ``sys.path``) would tie the test suite to a script's
command-line code and hide that dependency.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
BENCH = TESTS.parent / "bench"

#: calls that load or run a file given by path (``importlib.util.spec_from_file_location``,
#: ``runpy.run_path``, ``importlib.machinery.SourceFileLoader``, ``exec(open(...).read())``, ...)
#: or that put a folder on the import path (``sys.path.insert/append``)
PATH_LOADERS = {"spec_from_file_location", "run_path", "SourceFileLoader", "SourcelessFileLoader", "exec",
                "compile"}
SYS_PATH_EDITS = {"sys.path.insert", "sys.path.append", "sys.path.extend"}
NAME_LOADERS = {"import_module", "run_module", "__import__"}


def _bench_modules() -> set[str]:
    """Module names a bench script would have on ``sys.path``: bench/*.py stems, less those a test-support
    module of the same name or the standard library provide, plus the folder's own name."""
    stems = {p.stem for p in BENCH.glob("*.py")}
    local = {p.stem for p in TESTS.glob("*.py")}
    return {s for s in stems if s not in local and s not in sys.stdlib_module_names} | {"bench"}


def _mentions_bench(node: ast.AST, tainted: set[str]) -> bool:
    """Whether an expression names the bench folder: a string with a ``bench`` path component
    (``"bench"``, ``"bench/x.py"``, ``REPO / "bench" / ...``) or a variable assigned such a value."""
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            if "bench" in n.value.replace("\\", "/").split("/"):
                return True
        elif isinstance(n, ast.Name) and n.id in tainted:
            return True
    return False


def _call_name(call: ast.Call) -> str:
    """``spec_from_file_location`` for ``importlib.util.spec_from_file_location(...)``; ``sys.path.insert``
    (the whole name) for an edit of the import path."""
    f = call.func
    if isinstance(f, ast.Attribute):
        return f"sys.path.{f.attr}" if ast.unparse(f.value) == "sys.path" else f.attr
    return f.id if isinstance(f, ast.Name) else ""


def bench_loads(source: str, filename: str = "<test>") -> list[str]:
    """``"FILE:LINE: what"`` for every place in ``source`` that imports or loads a bench script."""
    tree = ast.parse(source, filename)
    modules = _bench_modules()
    # variables holding a bench path (``BENCH = REPO / "bench"``, then ``p = BENCH / "x.py"``), to a fixpoint
    tainted: set[str] = set()
    assigns = [(t.id, n.value) for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value
               for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)]
    grew = True
    while grew:
        new = {name for name, value in assigns if name not in tainted and _mentions_bench(value, tainted)}
        tainted |= new
        grew = bool(new)

    out = []  # (line, message)
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out += [(n.lineno, f"import {a.name}") for a in n.names if a.name.split(".")[0] in modules]
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module and n.module.split(".")[0] in modules:
            out.append((n.lineno, f"from {n.module} import ..."))
        elif isinstance(n, ast.Call):
            name = _call_name(n)
            args = [*n.args, *(k.value for k in n.keywords)]
            if name in PATH_LOADERS | SYS_PATH_EDITS and any(_mentions_bench(a, tainted) for a in args):
                out.append((n.lineno, f"{name}(...) on a bench/ path"))
            elif name in NAME_LOADERS and any(isinstance(a, ast.Constant) and isinstance(a.value, str)
                                              and a.value.split(".")[0] in modules for a in args):
                out.append((n.lineno, f"{name}(...) of a bench module"))
    return [f"{filename}:{line}: {what}" for line, what in sorted(out)]


def test_no_test_imports_a_bench_script():
    found = []
    for path in sorted(TESTS.glob("*.py")):
        found += bench_loads(path.read_text(), str(path.relative_to(TESTS.parent)))
    assert not found, ("tests must not load bench/ scripts; move what they share into the package or a "
                       "support module under tests/ that the bench script imports:\n" + "\n".join(found))


def test_the_scan_finds_every_way_of_loading_a_bench_script():
    """The scanner itself: each way a test could load a bench script is reported with its line; running a
    bench script as a subprocess, or importing a support module, is not."""
    assert {"compare_gluoncv", "equivalence_torchvision", "bench"} <= _bench_modules()
    assert "detection_match" not in _bench_modules()
    bad = '''import compare_gluoncv
from bench.common import software
from equivalence_torchvision import summarize as s
spec = importlib.util.spec_from_file_location("x", REPO / "bench" / "compare_tensorpack.py")
runpy.run_path("bench/build_zoo.py")
BENCH = REPO / "bench"
script = BENCH / f"{name}.py"
SourceFileLoader("y", str(script)).load_module()
sys.path.insert(0, str(BENCH))
importlib.import_module("gluoncv_reference")
'''
    found = bench_loads(bad, "t.py")
    assert [f.split(":")[1] for f in found] == ["1", "2", "3", "4", "5", "8", "9", "10"], found
    fine = '''import detection_match as eq
from conftest import REPO
import subprocess, sys
cmd = [sys.executable]
cmd.append(str(REPO / "bench" / "compare.py"))
subprocess.run(cmd + ["--help"], check=True)
spec = importlib.util.spec_from_file_location("demo", REPO / "scripts" / "demo.py")
'''
    assert bench_loads(fine, "t.py") == []
