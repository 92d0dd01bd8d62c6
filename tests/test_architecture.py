"""The shape of the house, checked on every import (including imports inside functions).

- Stages depend only on earlier stages, and only on their public faces (`public.py`, `events.py`).
- The core (`hospital/`) imports no stage, except its composition root.
- No module imports another module's `_private` name.
- The README's event table is the one the app wires.

A later stage reads an earlier one only through its public face (`public.py`, `events.py`): no
import of another stage's internals, and no ORM relationship from one stage's rows into another's.
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from flask import Flask

from hospital.jobs import registry

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("referrals", "imaging_orders", "ai_services", "research", "followup", "billing", "integration")
CORE = "hospital"
# The one place the core names the stages (and the demo, a client of the app): the app factory and
# the `hospital` command.
COMPOSITION_ROOT = {"hospital/app.py", "hospital/cli.py"}
# What a later stage may import of an earlier one.
PUBLIC_MODULES = re.compile(r"^(\w+)(\.archive)?\.(public|events)$")



@dataclass(frozen=True)
class Import:
    module: str  # the importing file, relative to the root
    target: str  # the dotted module imported
    names: tuple[str, ...]  # names taken from it (`from x import a, b`)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    relative = str(path.relative_to(ROOT))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(relative, alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = tuple(alias.name for alias in node.names)
            found.append(Import(relative, target, names))
            # `from package import module` imports a module too.
            found.extend(Import(relative, f"{target}.{name}", ()) for name in names)
    return found


def _all_imports() -> list[Import]:
    return [
        imp
        for package in (CORE, *STAGES, "synthetic", "demo")
        for path in sorted((ROOT / package).rglob("*.py"))
        for imp in _imports(path)
    ]


def _stage(dotted_or_path: str) -> str | None:
    first = dotted_or_path.replace("/", ".").split(".")[0]
    return first if first in STAGES else None


def _is_module(dotted: str) -> bool:
    path = ROOT / Path(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_no_stage_imports_a_later_stage() -> None:
    backwards = sorted(
        (imp.module, imp.target) for imp in _all_imports()
        if (importer := _stage(imp.module)) and (imported := _stage(imp.target))
        and STAGES.index(imported) > STAGES.index(importer)
    )
    assert backwards == []


def test_the_core_imports_no_stage_outside_its_composition_root() -> None:
    leaks = sorted(
        (imp.module, imp.target) for imp in _all_imports()
        if imp.module.startswith(f"{CORE}/") and imp.module not in COMPOSITION_ROOT
        and (_stage(imp.target) or imp.target.split(".")[0] in ("demo", "synthetic"))
    )
    assert leaks == []


def test_synthetic_data_is_a_leaf() -> None:
    ours = (CORE, *STAGES, "demo")
    leaks = sorted(
        (imp.module, imp.target) for imp in _all_imports()
        if imp.module.startswith("synthetic/") and imp.target.split(".")[0] in ours
    )
    assert leaks == []


# The evaluation-only phantom generator may feed evaluation and nothing else: if training,
# calibration, threshold choice or the retraining loop could see it, its numbers would flatter.
EVALUATION_GENERATOR = "synthetic.eval_phantoms"
# held_out.py is evaluation only too: it scores partner packages on the held-out set and feeds
# nothing that trains, calibrates or chooses a threshold.
EVALUATION_GENERATOR_USERS = {"ai_services/evaluation.py", "ai_services/held_out.py"}


def test_only_the_evaluation_module_uses_the_evaluation_generator() -> None:
    importers = {imp.module for imp in _all_imports()
                 if imp.target == EVALUATION_GENERATOR or imp.target.startswith(f"{EVALUATION_GENERATOR}.")}
    assert importers <= EVALUATION_GENERATOR_USERS, importers - EVALUATION_GENERATOR_USERS
    # ...and no module that trains, calibrates, chooses thresholds or runs inference reaches it
    # through the evaluation module either (the `hospital ai evaluate` command may).
    through = sorted(imp.module for imp in _all_imports()
                     if imp.target == "ai_services.evaluation" and imp.module != "ai_services/cli.py")
    assert through == []
    # The held-out evaluation of partner packages is reached only by the package checks.
    through_held_out = sorted(imp.module for imp in _all_imports()
                              if imp.target == "ai_services.held_out" and imp.module != "ai_services/package_service.py")
    assert through_held_out == []


def test_no_module_imports_another_modules_private_name() -> None:
    private = sorted(
        (imp.module, imp.target, name) for imp in _all_imports()
        for name in imp.names
        if name.startswith("_") and not name.startswith("__") and imp.target.split(".")[0] in (CORE, *STAGES, "synthetic", "demo")
    )
    assert private == []


def test_later_stages_use_only_the_public_face_of_earlier_ones() -> None:
    reaching_in = {
        (imp.module, imp.target) for imp in _all_imports()
        if (importer := _stage(imp.module)) and (imported := _stage(imp.target)) and importer != imported
        and _is_module(imp.target) and not PUBLIC_MODULES.match(imp.target)
        # the package itself (`import ai_services`) carries nothing
        and imp.target not in STAGES
    }
    assert sorted(reaching_in) == [], "imports of another stage's internals (use its public.py or events.py)"


def test_no_stage_imports_another_stages_models() -> None:
    models = sorted(
        (imp.module, imp.target) for imp in _all_imports()
        if (importer := _stage(imp.module)) and (imported := _stage(imp.target)) and importer != imported
        and imp.target.endswith(".models")
    )
    assert models == []


def test_no_orm_relationship_crosses_a_stage() -> None:
    """A stage's rows never navigate into another stage's rows (`appointment.referral`): a foreign
    key may name another stage's table, but reading it goes through that stage's public face."""
    from hospital.db import Base

    for models in sorted(ROOT.glob("*/**/models.py")):
        if _stage(str(models.relative_to(ROOT))):
            importlib.import_module(_module_name(models))
    crossing = []
    for mapper in Base.registry.mappers:
        owner = _stage(mapper.class_.__module__)
        for relationship in mapper.relationships:
            target = _stage(relationship.mapper.class_.__module__)
            if owner and target and owner != target:
                crossing.append(f"{mapper.class_.__name__}.{relationship.key} -> {relationship.mapper.class_.__name__}")
    assert sorted(crossing) == []


def _readme_event_rows() -> dict[str, tuple[str, set[str]]]:
    """event name -> (publisher, handlers) from README's event table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("| event | published by | handled by |", 1)[1].split("\n\n", 1)[0]
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in section.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        event = re.findall(r"`([^`]+)`", cells[0])[0]
        publisher = re.findall(r"`([^`]+)`", cells[1])[0]
        rows[event] = (publisher, set(re.findall(r"`([^`]+)`", cells[2])))
    return rows


def test_readme_event_table_is_the_wired_one(app: Flask) -> None:
    wired: dict[str, tuple[str, set[str]]] = {}
    for subscription in registry(app).all():
        event = subscription.event
        if _stage(event.__module__) is None:
            continue  # a test's own throwaway event
        publisher, handlers = wired.setdefault(event.name, (event.__module__, set()))
        handlers.add(subscription.handler)
    readme = {name: (f"{publisher}", handlers) for name, (publisher, handlers) in _readme_event_rows().items()}
    # The table names the event class's module (its events.py) as the publisher.
    assert {name: (publisher, handlers) for name, (publisher, handlers) in readme.items()} == {
        name: (module, handlers) for name, (module, handlers) in wired.items()
    }
