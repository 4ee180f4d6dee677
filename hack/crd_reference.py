"""Writes the GpuTaskQueue reference (docs/reference.md) from the CRD file, its one source.

.venv/bin/python hack/crd_reference.py          rewrite the generated section of docs/reference.md
.venv/bin/python hack/crd_reference.py --check  exit 1 when it is stale (a test runs this)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gpufleet.crd import schema

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference.md"
BEGIN, END = "<!-- crd-reference:begin -->", "<!-- crd-reference:end -->"


def _type(node: dict) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "quantity"
    if node.get("type") == "array":
        return f"[]{_type(node.get('items', {}))}"
    if node.get("type") == "object" and "additionalProperties" in node:
        return "map"
    return node.get("type", "object")


def _limits(node: dict) -> str:
    parts = []
    if "enum" in node:
        parts.append(" \\| ".join(f"`{v}`" for v in node["enum"]))
    if "minimum" in node or "maximum" in node:
        parts.append(f"{node.get('minimum', '')}..{node.get('maximum', '')}")
    if "default" in node and node["default"] not in ({}, None):
        parts.append(f"default `{json.dumps(node['default'])}`")
    return ", ".join(parts)


def rows(node: dict, path: str, required: bool = False):
    desc = " ".join(node.get("description", "").split()).replace("|", "\\|").replace("<", "&lt;")
    yield f"| `{path}` | {_type(node)}{' (required)' if required else ''} | {_limits(node)} | {desc} |"
    needed = set(node.get("required", []))
    for name, sub in node.get("properties", {}).items():
        yield from rows(sub, f"{path}.{name}", name in needed)
    items = node.get("items", {})
    needed = set(items.get("required", []))
    for name, sub in items.get("properties", {}).items():
        yield from rows(sub, f"{path}[].{name}", name in needed)


def render() -> str:
    s = schema()
    lines = ["| field | type | limits and default | meaning |", "| --- | --- | --- | --- |"]
    lines += list(rows(s["properties"]["spec"], "spec", True))
    status = s["properties"]["status"]
    lines += ["", "| status field | type | | meaning |", "| --- | --- | --- | --- |"]
    lines += [r for r in rows(status, "status") if not r.startswith("| `status` ")]
    rules = []

    def collect(node: dict, path: str) -> None:
        for rule in node.get("x-kubernetes-validations", []):
            rules.append(f"- `{path or 'metadata'}`: {' '.join(rule['message'].split())}")
        for name, sub in node.get("properties", {}).items():
            collect(sub, f"{path}.{name}")

    collect(s, "")
    lines += ["", "Cross-field rules, checked by the API server at `kubectl apply` (CEL):", "", *rules]
    return "\n".join(lines)


def main() -> int:
    text = REFERENCE.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{render()}\n{END}{tail}"
    if "--check" in sys.argv:
        if new != text:
            print(
                "docs/reference.md: the GpuTaskQueue reference is stale; run .venv/bin/python hack/crd_reference.py",
                file=sys.stderr,
            )
            return 1
        return 0
    REFERENCE.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
