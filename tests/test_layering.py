"""One direction of dependency: `codec` and `studies` build on `metaopt`, never the reverse, and no module
imports itself back through others (imports inside functions count too)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("metaopt", "codec", "studies")
# The codec task family is where the library meets its application; two aliases keep old commands working.
MAY_IMPORT_UP = {"metaopt.tasks.codec": "codec", "metaopt.compare": "studies", "metaopt.bench": "studies"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every project module `path` imports (`from a.b import c` counts as a.b, and as a.b.c if that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    return {name: imports(path) & files.keys() for name, path in files.items()}


def test_metaopt_imports_neither_codec_nor_studies():
    upward = {name: sorted(m for m in deps if m.split(".")[0] not in ("metaopt", MAY_IMPORT_UP.get(name)))
              for name, deps in import_graph().items() if name.startswith("metaopt")}
    assert {name: deps for name, deps in upward.items() if deps} == {}


def test_codec_does_not_import_studies():
    graph = import_graph()
    assert {name: sorted(deps) for name, deps in graph.items()
            if name.startswith("codec") and any(m.startswith("studies") for m in deps)} == {}


def test_no_import_cycle():
    graph = import_graph()
    done, path = set(), []

    def visit(name):
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        path.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path):
    """The parser really finds imports, including a late one inside a function."""
    source = tmp_path / "m.py"
    source.write_text("import torch\nfrom codec.models import build_model\n\n"
                      "def f():\n    from studies import compare\n")
    assert imports(source) == {"codec.models", "codec.models.build_model", "studies", "studies.compare"}
