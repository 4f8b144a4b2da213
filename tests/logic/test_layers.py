"""The package's layers (docs/development.md): each imports only from the layers below it, there is
no import cycle, and only the command line reaches the development-only control plane."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "bpfshare"

# Lowest first. A module may import from its own layer and the layers below.
LAYERS: list[tuple[str, ...]] = [
    ("bpfshare.errors", "bpfshare.types", "bpfshare.spec"),  # the vocabulary: pure data
    ("bpfshare.api", "bpfshare.object"),  # API types; object reader -> specs
    ("bpfshare.kernel", "bpfshare.cri"),  # live handles over bpf(), netlink, cgroups; the container runtime
    ("bpfshare.load",),  # loading and attaching
    ("bpfshare.engine",),  # plan and apply on a node, through the NodeKernel seam
    # the kopf agent (one per node); the cluster controller; how both reach the API server
    ("bpfshare.agent", "bpfshare.controller", "bpfshare.credentials"),
    ("bpfshare.commands", "bpfshare.cli", "bpfshare.__main__", "bpfshare.controlplane"),  # the front doors
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    """Module -> the bpfshare modules it imports, at the top or inside functions."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for name, path in paths.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("bpfshare"):
                    # `from pkg import submodule` depends on the submodule (pkg/__init__ runs for any
                    # import from pkg, so it is not an edge of its own); `from module import name` on the module.
                    subs = {f"{node.module}.{a.name}" for a in node.names} & set(paths)
                    found |= subs or {node.module}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("bpfshare")}
        out[name] = found
    return {m: {i for i in targets if i in paths and i != m} for m, targets in out.items()}


def layer(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return -1


def test_every_module_has_a_layer() -> None:
    assert [m for m in imports() if m != "bpfshare" and layer(m) < 0] == []


def test_no_module_imports_from_a_layer_above_it() -> None:
    wrong = [
        f"{m} (layer {layer(m)}) imports {i} (layer {layer(i)})"
        for m, targets in sorted(imports().items())
        for i in sorted(targets)
        if m != "bpfshare" and layer(i) > layer(m)
    ]
    assert wrong == []


def test_only_the_command_line_reaches_the_control_plane() -> None:
    allowed = ("bpfshare.controlplane", "bpfshare.commands", "bpfshare.cli")
    wrong = [
        f"{m} imports {i}"
        for m, targets in imports().items()
        for i in targets
        if i.startswith("bpfshare.controlplane") and not m.startswith(allowed)
    ]
    assert wrong == []


NODE_LEVEL = ("bpfshare.engine", "bpfshare.kernel", "bpfshare.load", "bpfshare.object")


def test_the_agent_and_the_controller_share_only_the_api_credentials() -> None:
    """Two drivers on one layer: the controller reads the node states and never drives the engine; what
    both need to reach the API server is ``bpfshare.credentials``; neither imports the other."""
    graph = imports()
    wrong = [
        f"{m} imports {i}"
        for m, targets in graph.items()
        for i in targets
        if (m.startswith("bpfshare.controller") and i.startswith("bpfshare.agent"))
        or (
            m.startswith("bpfshare.controller")
            and i.startswith(("bpfshare.engine", "bpfshare.kernel", "bpfshare.load"))
        )
        or (m.startswith("bpfshare.agent") and i.startswith("bpfshare.controller"))
        or (m == "bpfshare.credentials" and i.startswith(("bpfshare.agent", "bpfshare.controller")))
    ]
    assert wrong == []


def test_there_is_no_import_cycle() -> None:
    graph = imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []
