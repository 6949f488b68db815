"""The package's dependencies point one way (README "Layers"): read from the import statements
of every module (top-level and inside functions), so a lazy import counts too.

    hdl  ←  gen, boards  ←  host  ←  gen.cli / gen.search_cli (the command line, on top)

(``boards``: the catalogue, read by gen's cost models, and the builds, which use gen's
configuration and RTL; module by module without a cycle.)

- ``hdl`` imports nothing of ``gen``, ``boards`` or ``host``;
- ``gen`` imports nothing of ``host`` except the command line;
- ``host`` imports only the wire formats of ``hdl`` (protocol, registry, unit specs, weight
  layouts), except the simulated device itself (``host.simulated``, ``host.sim``,
  ``host.verilator``), which *is* gateware;
- the link layer of ``host`` (``device``, ``transport``, ``units``) does not import torch at
  module level;
- no two modules import each other, directly or through others.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hdl", "gen", "boards", "host")
#: ``hdl`` modules that hold wire formats only (no gateware); ``host`` may import them.
WIRE_FORMATS = {"hdl.protocol", "hdl.registry", "hdl.linear_spec", "hdl.attention_spec",
                "hdl.sparse_dense_spec", "hdl.linear_layout"}
SIMULATED_DEVICE = {"host.simulated", "host.sim", "host.verilator"}
COMMAND_LINE = {"gen.cli", "gen.search_cli"}
LINK_LAYER = {"host.device", "host.transport", "host.units"}


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(f): f for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py")}


def _targets(module, node):
    """Modules of this project that an import statement names (``amaformer.`` stripped)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif node.level:                                # relative: from the module's package
        base = module.split(".")
        if MODULES[module].name != "__init__.py":
            base = base[:-1]
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
        names = [f"amaformer.{prefix}.{a.name}" for a in node.names]
    else:
        names = [f"{node.module}.{a.name}" for a in node.names]
    out = set()
    for name in names:
        if not name.startswith("amaformer."):
            continue
        name = name[len("amaformer."):]
        while name not in MODULES and "." in name:     # a name inside a module
            name = name.rsplit(".", 1)[0]
        if name in MODULES and name != module:
            out.add(name)
    return out


def _graph():
    """``{module: {modules it imports}}`` and ``{module: top-level imported names}``."""
    edges, top_level = {}, {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        edges[module] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[module] |= _targets(module, node)
        top_level[module] = {a.name.split(".")[0] for node in tree.body
                             if isinstance(node, ast.Import) for a in node.names}
        top_level[module] |= {node.module.split(".")[0] for node in tree.body
                              if isinstance(node, ast.ImportFrom) and node.module
                              and not node.level}
    return edges, top_level


EDGES, TOP_LEVEL = _graph()


def _edges(src, dst):
    return sorted(f"{m} -> {d}" for m in EDGES if m.split(".")[0] == src
                  for d in EDGES[m] if d.split(".")[0] == dst)


def test_graph_is_read():
    assert len(MODULES) > 60 and "gen.program" in MODULES and "host.runtime" in EDGES
    assert "gen.program" in EDGES["host.runtime"] or any(
        d.startswith("gen.") for d in EDGES["host.runtime"])


@pytest.mark.parametrize("dst", ["gen", "boards", "host"])
def test_hdl_imports_only_hdl(dst):
    assert _edges("hdl", dst) == []


def test_gen_imports_host_only_from_the_command_line():
    bad = [e for e in _edges("gen", "host") if e.split(" ")[0] not in COMMAND_LINE]
    assert bad == []


def test_boards_does_not_import_host():
    assert _edges("boards", "host") == []


def test_host_imports_no_gateware():
    bad = [e for e in _edges("host", "hdl")
           if e.split(" ")[0] not in SIMULATED_DEVICE and e.split(" ")[-1] not in WIRE_FORMATS]
    assert bad == []
    # the wire formats themselves import no gateware
    assert [f"{m} -> {d}" for m in WIRE_FORMATS for d in EDGES[m] if d not in WIRE_FORMATS] == []


def test_link_layer_keeps_torch_out():
    assert {m: "torch" for m in LINK_LAYER if "torch" in TOP_LEVEL[m]} == {}


def test_no_import_cycles():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):                               # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in EDGES[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while comp[-1:] != [v]:
                comp.append(stack.pop())
                on_stack.discard(comp[-1])
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(EDGES):
        if v not in index:
            visit(v)
    assert cycles == []
