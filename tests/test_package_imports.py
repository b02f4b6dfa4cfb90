"""The package's imports form no cycle (read from the sources with ``ast``, nothing imported).

Every import of a package module counts, at module level and inside functions alike: an import deferred into a
function still makes the two modules depend on each other, it only hides the circle from Python (imports of
third-party packages may stay lazy; only the package's own modules are graphed). ``from X import name`` depends
on the module ``X.name`` when there is one, else on ``X``."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "oneflow_posmlp"


def module_files(root=PACKAGE):
    """``{dotted module name: path}`` of every module of the package (``__init__`` as the package itself)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(tree):
    """Every import statement of a module, wherever it stands."""
    return (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def module_imports(name, path, modules):
    """The package modules that module ``name`` imports (at module level or in a function)."""
    is_package = path.name == "__init__.py"
    deps = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        deps.update(t for t in targets if t in modules and t != name)
    return deps


def find_cycle(graph):
    """One cycle ``[a, b, ..., a]`` of the directed graph ``{node: deps}``, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def import_graph():
    modules = module_files()
    return {name: module_imports(name, path, modules) for name, path in modules.items()}


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_reader_sees_relative_imports_and_would_report_a_cycle():
    graph = import_graph()
    assert "oneflow_posmlp.engine.optim" in graph["oneflow_posmlp.engine.step"]
    assert "oneflow_posmlp.parallel.pipeline" in graph["oneflow_posmlp.parallel.context"]  # from . import pipeline
    graph["oneflow_posmlp.engine.optim"] = graph["oneflow_posmlp.engine.optim"] | {"oneflow_posmlp.engine.step"}
    assert find_cycle(graph) is not None


def test_imports_inside_functions_count():
    graph = import_graph()
    assert "oneflow_posmlp.checkpoint.load" in graph["oneflow_posmlp.models.posmlp"]  # create_model(weights=)
    assert not any(dep.startswith("oneflow_posmlp.models") for name, deps in graph.items()
                   if name.startswith("oneflow_posmlp.checkpoint") for dep in deps), "checkpoint/ imports models/"


@pytest.mark.parametrize("graph,cyclic", [({"a": {"b"}, "b": {"c"}, "c": set()}, False),
                                          ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True)])
def test_find_cycle(graph, cyclic):
    assert (find_cycle(graph) is not None) == cyclic
