"""The rooms import one way: every import of a project room (module level or inside a function) is allowed below,
and the allowed graph has no cycle. The server's python-backend programs import nothing of the project."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("segformer", "client", "build", "server", "training", "bench", "loadtest", "plugins", "deploy")
ALLOWED = {
    "segformer": set(),
    "client": {"segformer"},
    "build": {"segformer", "client"},
    "training": {"segformer", "client"},
    "server": {"segformer", "client", "build"},
    "loadtest": {"segformer", "client", "build"},
    "bench": {"segformer", "client", "build", "server", "loadtest", "training"},
    "plugins": {"bench"},
    "deploy": {"build"},
}


def imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        rooms.update(n.split(".")[0] for n in names if n.split(".")[0] in ROOMS)
    return rooms


def test_every_room_has_a_docstring_saying_what_it_may_import():
    for room in ROOMS:
        doc = ast.get_docstring(ast.parse((ROOT / room / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"{room}/__init__.py needs a docstring naming what it may import"


def test_imports_go_one_way():
    bad = []
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            if "build" in path.relative_to(ROOT / room).parts[:-1] and room == "plugins":
                continue  # plugins/build/ is CMake output
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

    for room in ROOMS:
        visit(room, [])
        seen.add(room)
    assert seen == set(ROOMS)
