"""The import graph follows the layers of docs/architecture.md: no import up a layer, no circle.

Why a test: layers cross one convenient import at a time (a core module reaching for a data tool, an
entry point inside a library package), and each crossing makes the lower layer unusable without the
upper one. Every import counts, also those inside functions (they run as soon as the function does)
and those under ``TYPE_CHECKING`` (they still tie the modules together for a reader).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: layer -> (name, paths). A module belongs to the longest path that contains it; a folder ends in "/".
#: thinchat/model/ is layer 2 but for two files: chat_templates.py imports nothing of ours and core's
#: generation.py renders with it (layer 1); loading.py dispatches to the ClipCap loader (layer 3), so it
#: is the chat engine's (layer 4). thinchat/clipcap/ is layer 3 but for its training, train.py, which runs
#: on thinchat/train/'s trainer and checkpoints, so it is training's (layer 5).
#: docs/architecture.md lists the same paths in its layer table (checked below).
LAYERS: dict[int, tuple[str, tuple[str, ...]]] = {
    1: (
        "core",
        (
            "thinchat/__init__.py", "thinchat/errors.py", "thinchat/config.py", "thinchat/images.py",
            "thinchat/conversation.py", "thinchat/evalsample.py", "thinchat/model/chat_templates.py",
            "thinchat/generation.py", "thinchat/precision.py", "thinchat/hfdata.py", "thinchat/threads.py", "thinchat/domain/",
        ),
    ),
    2: (
        "models",
        (
            "thinchat/model/", "thinchat/testing.py",
        ),
    ),
    3: ("clipcap", ("thinchat/clipcap/",)),
    4: (
        "chat engine",
        (
            "thinchat/model/loading.py", "thinchat/engine.py", "thinchat/prompting.py",
            "thinchat/chat/__init__.py", "thinchat/chat/session.py", "thinchat/chat/history.py", "thinchat/chat/look.py",
        ),
    ),
    5: ("train", ("thinchat/train/", "thinchat/clipcap/train.py")),
    6: ("eval", ("thinchat/eval/",)),
    7: ("data tools", ("data_tools/",)),
    8: ("front ends", ("thinchat/server/", "thinchat/web/", "thinchat/chat/repl.py")),
    9: (
        "recipes, commands",
        (
            "thinchat/recipes/", "thinchat/commands/", "thinchat/cli.py", "thinchat/__main__.py",
            "cli_demo.py", "web_demo.py",
        ),
    ),
}  # fmt: skip

PACKAGES = ("thinchat", "data_tools")
ENTRY_SCRIPTS = ("cli_demo.py", "web_demo.py")


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for both packages and the entry scripts at the repository root."""
    files: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    for script in ENTRY_SCRIPTS:
        files[Path(script).stem] = REPO / script
    return files


def _layer_of(path: Path) -> int | None:
    rel = path.relative_to(REPO).as_posix()
    best: tuple[int, int] | None = None  # (match length, layer)
    for layer, (_, paths) in LAYERS.items():
        for entry in paths:
            if (rel == entry or (entry.endswith("/") and rel.startswith(entry))) and (
                best is None or len(entry) > best[0]
            ):
                best = (len(entry), layer)
    return best[1] if best else None


def _imports(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """Modules of ours that ``name`` imports anywhere in its file -> the first line that does."""

    def known(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import submodule` imports the submodule; `from module import name` the module.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            module = known(target)
            if module and module != name:
                found.setdefault(module, node.lineno)
    return found


def _graph() -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    modules = _module_files()
    return modules, {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_module_has_a_layer() -> None:
    modules = _module_files()
    missing = sorted(str(path.relative_to(REPO)) for path in modules.values() if _layer_of(path) is None)
    assert not missing, f"modules in no layer (add them to LAYERS and docs/architecture.md): {missing}"


def test_no_import_goes_up_a_layer() -> None:
    modules, edges = _graph()
    upward = []
    for name, imported in edges.items():
        here = _layer_of(modules[name])
        for target, line in imported.items():
            there = _layer_of(modules[target])
            if here is not None and there is not None and there > here:
                upward.append(
                    f"{modules[name].relative_to(REPO)}:{line} (layer {here}) imports {target} (layer {there})"
                )
    assert not upward, "imports up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_circle() -> None:
    _, edges = _graph()
    assert not _cycles(edges), (
        f"modules that import each other (directly or round a circle): {_cycles(edges)}"
    )


def test_the_circle_finder_finds_circles() -> None:
    edges = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert _cycles(edges) == [["a", "b", "c"]]


def _documented_layers() -> dict[int, set[str]]:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows: dict[int, set[str]] = {}
    for line in text.splitlines():
        match = re.match(r"\|\s*(\d)\s+[^|]*\|([^|]*)\|", line)
        if match:
            rows[int(match.group(1))] = set(re.findall(r"`([^`]+)`", match.group(2)))
    return rows


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_the_layer_table_matches_docs_architecture(layer: int) -> None:
    documented = _documented_layers()
    assert documented.get(layer) == set(LAYERS[layer][1]), (
        f"layer {layer}: docs/architecture.md lists {sorted(documented.get(layer, ()))}, "
        f"this test {sorted(LAYERS[layer][1])}"
    )
