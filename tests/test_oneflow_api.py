"""The pinned OneFlow has what the code calls: every ``flow.<...>`` / ``oneflow.<...>`` attribute chain in
oneflow_posmlp/ and tools/ (whatever name OneFlow or one of its modules was imported under: ``import oneflow as
flow``, ``import oneflow.nn as nn``, ``from oneflow import nn``, ``from oneflow.nn import functional as F``) is
resolved against the installed OneFlow, submodules imported on the way. A chain that does not resolve fails the
test, named by file and line: code that only runs on a GPU (``flow.cuda.get_rng_state`` once) is checked here
too, where no GPU is."""
import ast
import importlib
import pathlib

import oneflow_posmlp  # noqa: F401  (loadable CUDA libraries before OneFlow, as the tools)

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "oneflow_posmlp").rglob("*.py"), *(ROOT / "tools").rglob("*.py")])


def oneflow_aliases(tree):
    """``{local name: dotted OneFlow path}`` of the imports of OneFlow in a module (anywhere in it)."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "oneflow" or a.name.startswith("oneflow."):
                    # `import oneflow.nn as nn` binds the submodule, `import oneflow.nn` binds `oneflow`
                    aliases[a.asname or "oneflow"] = a.name if a.asname else "oneflow"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                (node.module == "oneflow" or node.module.startswith("oneflow.")):
            for a in node.names:
                if a.name != "*":
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _chain(node):
    """``a.b.c`` -> ``["a", "b", "c"]`` for a chain of names, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    return None


def oneflow_references(path):
    """``[(line, dotted OneFlow path)]`` of the module at ``path``: each import from OneFlow and each longest
    attribute chain read from a OneFlow alias."""
    tree = ast.parse(path.read_text(), str(path))
    aliases = oneflow_aliases(tree)
    refs = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                (node.module == "oneflow" or node.module.startswith("oneflow.")):
            refs.extend((node.lineno, f"{node.module}.{a.name}") for a in node.names if a.name != "*")
        elif isinstance(node, ast.Import):
            refs.extend((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "oneflow")
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            chain = _chain(node)
            if chain and chain[0] in aliases and not _is_inner(node, tree):
                refs.append((node.lineno, ".".join([aliases[chain[0]], *chain[1:]])))
    return sorted(refs)


def _is_inner(node, tree, _parents={}):
    """Whether ``node`` is the value of a longer attribute chain (only the longest chain is resolved)."""
    if id(tree) not in _parents:
        _parents[id(tree)] = {id(child): parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    parent = _parents[id(tree)].get(id(node))
    return isinstance(parent, ast.Attribute) and parent.value is node


def resolve(dotted):
    """The object at a dotted OneFlow path, importing submodules on the way; AttributeError if it is not there."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, name in enumerate(parts[1:], 1):
        if hasattr(obj, name):
            obj = getattr(obj, name)
            continue
        try:
            obj = importlib.import_module(".".join(parts[:i + 1]))
        except ImportError:
            raise AttributeError(f"{'.'.join(parts[:i])} has no attribute {name!r}") from None
    return obj


def missing_references(paths):
    missing, seen = [], 0
    for path in paths:
        for line, dotted in oneflow_references(path):
            seen += 1
            try:
                resolve(dotted)
            except AttributeError as err:
                missing.append(f"{path.relative_to(ROOT)}:{line}: {dotted} ({err})")
    return missing, seen


def test_every_oneflow_attribute_the_code_names_exists_in_the_installed_oneflow():
    missing, seen = missing_references(SOURCES)
    assert seen > 300  # the walk finds the code's references (about 330 when this was written)
    assert not missing, "OneFlow 0.9.0 lacks:\n" + "\n".join(missing)


def test_the_walk_follows_every_import_form_and_names_file_and_line(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import oneflow as flow\nimport oneflow.nn as nn\nfrom oneflow import cuda\n"
                   "from oneflow.nn import functional as F\nfrom oneflow.amp import GradScaler\n\n"
                   "def f(x):\n    flow.cuda.get_rng_state()\n    nn.Graph.no_such_method\n    cuda.is_available()\n"
                   "    F.gelu(x).sum()\n    x.flow.cuda.not_oneflow\n    return flow.no_such_function(x)\n")
    refs = oneflow_references(src)
    assert (8, "oneflow.cuda.get_rng_state") in refs and (11, "oneflow.nn.functional.gelu") in refs
    assert not any("not_oneflow" in d for _, d in refs)  # an attribute of something else is not OneFlow's
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        missing, _ = missing_references([src])
    finally:
        ROOT = root
    assert [m.split(" (")[0] for m in missing] == ["m.py:8: oneflow.cuda.get_rng_state",
                                                   "m.py:9: oneflow.nn.Graph.no_such_method",
                                                   "m.py:13: oneflow.no_such_function"]
