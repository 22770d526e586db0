"""crbr.nn is the bottom layer: it imports nothing else from crbr, and the models' old import
paths still give its objects."""

import ast
import subprocess
import sys
from pathlib import Path

import crbr.nn

ALLOWED = {"crbr.ranking"}  # the one other crbr module this layer may use


def test_nn_sources_import_nothing_else_from_crbr():
    root = Path(crbr.nn.__file__).parent
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level >= 2:  # from ..x: leaves crbr.nn
                    target = "crbr." + (node.module or "")
                    assert target in ALLOWED, f"{path.name}: from {'.' * node.level}{node.module or ''} import ..."
                elif node.level == 0 and (node.module or "").startswith("crbr"):
                    assert node.module.startswith("crbr.nn") or node.module in ALLOWED, f"{path.name}: {node.module}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    assert not a.name.startswith("crbr") or a.name.startswith("crbr.nn"), f"{path.name}: {a.name}"


def test_importing_crbr_nn_loads_no_other_crbr_module():
    code = "import sys, crbr.nn; print(' '.join(sorted(m for m in sys.modules if m.startswith('crbr'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert [m for m in out if m != "crbr" and not m.startswith("crbr.nn") and m not in ALLOWED] == []


def test_old_import_paths_give_the_shared_objects():
    import crbr.models.losses as old_losses
    import crbr.nn.losses as losses
    from crbr.models import qformer, sasrec, set_transformer

    for name in old_losses.__all__:
        assert getattr(old_losses, name) is getattr(losses, name)
    for name in ("MHA", "choose_cut", "choose_cuts", "cos_sin", "future_targets", "rotary_angles", "rotate", "newest",
                 "sinusoidal", "time_buckets"):
        assert getattr(qformer, name) is getattr(crbr.nn, name)
    assert sasrec.CausalBlock is crbr.nn.CausalBlock
    assert set_transformer.MAB is crbr.nn.MAB and set_transformer.SetBlock is crbr.nn.SetBlock
