#!/usr/bin/env python3
"""The operator's module layers, from its imports: a Mermaid picture for docs/architecture.md.

Each module of operator/gpufleet (and the worker contract it shares) sits in one layer; a module imports only
from the layers below its own, and from its own layer where that layer allows it (the three steps of the tick
know nothing of each other: what they share lives in the model). The picture is made from the imports as they are (an import under
`if TYPE_CHECKING:` is for types only and does not count), so it cannot drift from the code:
tests/docs/test_architecture.py fails when the committed picture differs from what this prints, or when a module
imports one above it or sits in no layer.

    python hack/module_layers.py           # print the picture
    python hack/module_layers.py --write   # put it into docs/architecture.md
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "operator" / "gpufleet"
CONTRACT = "gpufleet_worker.contract"
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- module-layers: begin (hack/module_layers.py --write) -->", "<!-- module-layers: end -->"

# Bottom first: (name, modules, whether its modules may import each other).
LAYERS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("contract", (CONTRACT,), False),
    ("spec", ("crd", "spec"), True),
    ("model", ("model",), False),
    ("edges", ("metrics", "kube", "broker", "cache", "leader"), True),
    (
        "pure core",
        ("budget", "scalein", "throughput", "policy", "status", "claims", "resources", "schedule"),
        True,
    ),
    ("tick", ("observe", "plan", "apply"), False),
    ("wiring", ("controller",), False),
    ("entry", ("handlers", "cli", "__main__"), True),
)


def layer_of() -> dict[str, int]:
    return {module: i for i, (_, modules, _) in enumerate(LAYERS) for module in modules}


def _runtime_imports(tree: ast.AST) -> set[str]:
    """Modules of the operator (and the contract) that `tree` imports when it runs."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "gpufleet":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("gpufleet."):
                found.add(node.module.split(".")[1])
            elif node.module == "gpufleet_worker" and any(a.name == "contract" for a in node.names):
                found.add(CONTRACT)
            elif node.module == CONTRACT:
                found.add(CONTRACT)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gpufleet."):
                    found.add(alias.name.split(".")[1])
                elif alias.name == CONTRACT:
                    found.add(CONTRACT)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imports() -> dict[str, set[str]]:
    """Module -> the operator modules (and the contract) it imports at run time."""
    out = {}
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "__init__":
            continue
        out[path.stem] = _runtime_imports(ast.parse(path.read_text())) - {path.stem}
    out[CONTRACT] = set()
    return out


def problems() -> list[str]:
    """Modules in no layer, imports that point up, and imports across a layer whose modules stay apart."""
    layers, graph = layer_of(), imports()
    out = [f"{m} sits in no layer of hack/module_layers.py" for m in graph if m not in layers]
    for m, deps in graph.items():
        for d in sorted(deps):
            if m not in layers or d not in layers:
                continue
            name, _, mutual = LAYERS[layers[m]]
            if layers[d] > layers[m]:
                out.append(f"{m} ({name}) imports {d} ({LAYERS[layers[d]][0]}), a layer above it")
            elif layers[d] == layers[m] and not mutual:
                out.append(f"{m} imports {d}: the modules of the {name} layer stay apart")
    return out


def picture() -> str:
    """A Mermaid flowchart: one box per layer naming its modules, an arrow where a layer imports a lower one."""
    layers, graph = layer_of(), imports()
    lines = ["```mermaid", "flowchart TB"]
    for i, (name, modules, _) in reversed(list(enumerate(LAYERS))):
        lines.append(f'  L{i}["{name}: {", ".join(modules)}"]')
    arrows = sorted({(layers[m], layers[d]) for m, deps in graph.items() for d in deps
                     if m in layers and d in layers and layers[d] != layers[m]}, reverse=True)  # fmt: skip
    lines += [f"  L{a} --> L{b}" for a, b in arrows]
    lines.append("```")
    return "\n".join(lines) + "\n"


def committed() -> str | None:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def write() -> None:
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{BEGIN}\n{picture()}{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="update the picture in docs/architecture.md")
    args = parser.parse_args()
    for problem in problems():
        print(f"module_layers: {problem}", file=sys.stderr)
    if args.write:
        write()
    else:
        sys.stdout.write(picture())
    return 1 if problems() else 0


if __name__ == "__main__":
    sys.exit(main())
