"""One vocabulary: every MLflow tag, Optuna user attribute and registry alias is spelled once, in bench/tags.py.

The test reads the package's source: a string literal elsewhere in bench/ equal to one of those names is the
name spelled a second time, which drifts when one of them changes.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from bench import tags
from bench.spec import BaselineSpec, EvalSpec, PrunerSpec, SamplerSpec, StudySpec
from vae.data import DataConfig
from vae.model import ModelConfig
from vae.train import TrainConfig

BENCH = Path(tags.__file__).resolve().parent


def _config_fields() -> set[str]:
    """Names of the study file's and the configs' fields: a tag that mirrors one shares its word, not its meaning."""
    classes = (StudySpec, SamplerSpec, PrunerSpec, EvalSpec, BaselineSpec, DataConfig, ModelConfig, TrainConfig)
    return {f.name for cls in classes for f in dataclasses.fields(cls)}


def _vocabulary() -> dict[str, str]:
    """value -> name of every distinctive string constant in bench/tags.py (one with '_' or '.': a plain word
    such as "seed" or "study" is also ordinary text elsewhere)."""
    tree = ast.parse((BENCH / "tags.py").read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            value = node.value.value
            if ("_" in value or "." in value) and "{" not in value:
                out[value] = node.targets[0].id
    return out


def _string_literals(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    return [
        (n.value, n.lineno)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_the_vocabulary_is_not_empty_and_has_the_names_the_stages_share():
    vocab = _vocabulary()
    assert {"mlflow_run_id", "vaebench.role", "fail_reason", "ood_dataset", "mlflow.parentRunId"} <= set(vocab)


def test_no_module_spells_a_tag_or_attribute_name_itself():
    vocab, fields = _vocabulary(), _config_fields()
    repeats = [
        f"{path.relative_to(BENCH.parent)}:{line}: {value!r} is tags.{vocab[value]}"
        for path in sorted(BENCH.rglob("*.py"))
        if path.name != "tags.py"
        for value, line in _string_literals(path)
        if value in vocab and value not in fields
    ]
    assert repeats == []
