"""Rules of the code base that keep it livable (docs/architecture.md): no module reaches into another's
private names, and the training loop's state is declared where a reader looks for it."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "okd").rglob("*.py")) + [ROOT / "run.py"]


def test_no_module_imports_another_modules_private_names():
    offences = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    offences.append(f"{path.relative_to(ROOT)} imports {private} from {node.module}")
    assert not offences, "make them public or move them: " + "; ".join(offences)


def test_every_trainer_attribute_is_created_in_init_or_setup():
    """A reader finds every attribute of the loop in ``__init__``, ``setup_model`` or ``setup``."""
    tree = ast.parse((ROOT / "okd" / "engine" / "trainer.py").read_text())
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    created: set[str] = set()
    assigned: dict[str, set[str]] = {}
    for method in (n for n in trainer.body if isinstance(n, ast.FunctionDef)):
        for name in _self_attributes_assigned(method):
            if method.name in ("__init__", "setup_model", "setup"):
                created.add(name)
            else:
                assigned.setdefault(name, set()).add(method.name)
    late = {name: sorted(where) for name, where in assigned.items() if name not in created}
    assert not late, f"attributes first set outside __init__/setup_model/setup: {late}"
    assert {"optimizer", "train_loader", "checkpoints", "device", "ctx"} <= created  # the check sees them


def _self_attributes_assigned(function: ast.FunctionDef) -> list[str]:
    names = []
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        else:
            continue
        for target in targets:
            for element in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(element, ast.Attribute) and isinstance(element.value, ast.Name) and element.value.id == "self":
                    names.append(element.attr)
    return names
