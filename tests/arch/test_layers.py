"""The package's layers point down: no import cycle, and each layer imports only the layers below
it (function-local imports included). Layers, bottom to top:

  settings, fileio, ranking, stats     plumbing, no other crbr imports; paired statistics
  data, checkpoint, nn                 events and datasets; checkpoint files; shared blocks
  features, config                     item features; experiment configs
  models                               the model contract and the models
  eval, index                          evaluation; item indexes
  retrieval, train, results, analysis  models searched in indexes; the training loop; records;
  semantic_ids                         analysis of trained models and finished runs; item
                                       tokenizers (RQ-VAE trains through the loop)
  federated, pipeline                  federated training; multi-stage chains
  cli, serve                           the command line; the HTTP service
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "crbr"
LAYERS = [
    {"settings", "fileio", "ranking", "stats"},
    {"data", "checkpoint", "nn"},
    {"features", "config"},
    {"models"},
    {"eval", "index"},
    {"retrieval", "train", "results", "analysis", "semantic_ids"},
    {"federated", "pipeline"},
    {"cli", "serve"},
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every crbr module `path` imports, anywhere in the file."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text())
    # a module's `if __name__ == "__main__":` block runs only as a script, never on import
    tree.body = [n for n in tree.body if not (isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "crbr"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "crbr":
                continue
            out.add(target)
            for a in node.names:  # `from . import x` may name a submodule
                cand = f"{target}.{a.name}"
                if (SRC.parent / Path(*cand.split("."))).with_suffix(".py").exists():
                    out.add(cand)
    return out - {mod}


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in SRC.rglob("*.py")}
    g = {}
    for m, p in mods.items():
        deps = set()
        for t in imports_of(p):
            while t not in mods and "." in t:  # `from crbr.x import name`: the module is crbr.x
                t = t.rsplit(".", 1)[0]
            if t in mods and t != m:
                deps.add(t)
        g[m] = deps
    return g


def layer(mod: str) -> int:
    top = mod.split(".")[1] if "." in mod else ""
    if top not in LEVEL:
        raise AssertionError(f"{mod}: its top-level name {top!r} is in no layer; add it to LAYERS")
    return LEVEL[top]


def test_every_module_is_in_a_layer_and_imports_only_lower_or_equal_layers():
    g = graph()
    bad = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
           for m, deps in sorted(g.items()) if m != "crbr" for d in sorted(deps) if d != "crbr" and layer(d) > layer(m)]
    assert not bad, "imports that point up:\n" + "\n".join(bad)


@pytest.mark.parametrize("banned", ["crbr.train", "crbr.index", "crbr.cli", "crbr.eval", "crbr.retrieval", "crbr.federated"])
def test_no_model_module_imports_training_indexes_or_the_cli(banned):
    g = graph()
    bad = [(m, d) for m, deps in g.items() if m.startswith("crbr.models") for d in deps if d.startswith(banned)]
    assert not bad


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if d == "crbr":
                continue
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_the_layer_walk_sees_relative_and_local_imports(tmp_path):
    """The checker itself: a function-local relative import is found."""
    g = graph()
    assert "crbr.models.registry" in g["crbr.models"]
    assert "crbr.checkpoint" in g["crbr.models.registry"]
