"""The rooms import one way: every import of a project room (module level or inside a function) is allowed below,
and the allowed graph has no cycle; no two modules of one package import each other, directly or round a loop.
The server's python-backend programs import nothing of the project."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("segformer", "client", "build", "server", "training", "bench", "loadtest", "plugins", "deploy")
# server/models is a room of its own: the programs Triton runs and their runtime, which `build` imports too (its
# checks run the rows with the code that serves them)
RUNTIME = "server.models"
ALLOWED = {
    "segformer": set(),
    "client": {"segformer"},
    "build": {"segformer", "client", RUNTIME},
    "training": {"segformer", "client"},
    "server": {"segformer", "client", "build", RUNTIME},
    RUNTIME: {"segformer"},  # the GPU program only, running the model library copied beside it (test below)
    "loadtest": {"segformer", "client", "build"},
    "bench": {"segformer", "client", "build", "server", RUNTIME, "loadtest", "training"},
    "plugins": {"bench", "client", "segformer"},  # the CLI kit and the error base
    "deploy": {"build", "client", "segformer"},
}
# Import cycles between modules of one package still present, each to be removed by its owner (not to be added to).
KNOWN_CYCLES: set[frozenset] = set()  # none: client.runners <-> client.endpoints ended with the runner family


def _room(name: str) -> str | None:
    if name == RUNTIME or name.startswith(RUNTIME + "."):
        return RUNTIME
    return name.split(".")[0] if name.split(".")[0] in ROOMS else None


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute module names `path` imports (module level or inside functions); `from pkg import mod` names both
    `pkg` and `pkg.mod`, relative imports are resolved against the file's package."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def imported_rooms(path: Path) -> set[str]:
    return {r for r in map(_room, imported_modules(path)) if r}


def room_of(path: Path) -> str:
    return _room(".".join(path.relative_to(ROOT).with_suffix("").parts))


def test_every_room_has_a_docstring_saying_what_it_may_import():
    for room in ROOMS:
        doc = ast.get_docstring(ast.parse((ROOT / room / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"{room}/__init__.py needs a docstring naming what it may import"


def _sources() -> list[Path]:
    out = []
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            if "build" in path.relative_to(ROOT / room).parts[:-1] and room == "plugins":
                continue  # plugins/build/ is CMake output
            out.append(path)
    return out


def test_imports_go_one_way():
    bad = []
    for path in _sources():
        room = room_of(path)
        for other in imported_rooms(path) - {room} - ALLOWED[room]:
            bad.append(f"{path.relative_to(ROOT)} imports {other}")
    assert not bad, "imports against the room rules:\n" + "\n".join(bad)


def test_python_backend_programs_import_nothing_of_the_project():
    for path in sorted((ROOT / "server" / "models").glob("*.py")):
        if path.name == "__init__.py":
            continue
        used = imported_rooms(path)
        # the GPU model runs the model library copied beside it in its model directory
        allowed = {"segformer"} if path.name == "gpu_model.py" else set()
        assert used <= allowed, f"{path.name} imports {sorted(used - allowed)}"


def test_the_allowed_graph_has_no_cycle():
    seen, done = set(), set()

    def visit(room, trail):
        assert room not in trail, f"cycle: {' -> '.join(trail + [room])}"
        if room in done:
            return
        for nxt in ALLOWED[room]:
            visit(nxt, trail + [room])
        done.add(room)

    for room in ALLOWED:
        visit(room, [])
        seen.add(room)
    assert seen == set(ROOMS) | {RUNTIME}


def package_cycles(sources: list[Path], root: Path = ROOT) -> list[list[str]]:
    """Import cycles between modules of one package (each as the modules round the loop)."""
    modules = {".".join(p.relative_to(root).with_suffix("").parts): p for p in sources}
    edges = {}
    for name, path in modules.items():
        package = name.rsplit(".", 1)[0]
        edges[name] = {m for m in imported_modules(path, root) if m in modules and m != name
                       and m.rsplit(".", 1)[0] == package and not m.endswith(".__init__")}
    cycles, done = [], set()

    def visit(node, trail):
        if node in trail:
            cycles.append(trail[trail.index(node):])
            return
        if node in done:
            return
        for nxt in sorted(edges[node]):
            visit(nxt, trail + [node])
        done.add(node)

    for name in sorted(edges):
        visit(name, [])
    return cycles


def test_no_import_cycle_inside_a_package():
    cycles = [c for c in package_cycles(_sources()) if frozenset(c) not in KNOWN_CYCLES]
    assert not cycles, "modules of one package import each other:\n" + "\n".join(
        " -> ".join(c + [c[0]]) for c in cycles)


def test_the_cycle_check_finds_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import g\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import a\n")  # imports into the loop, not part of it
    found = package_cycles(sorted(pkg.glob("*.py")), tmp_path)
    assert [sorted(c) for c in found] == [["pkg.a", "pkg.b", "pkg.c"]]
