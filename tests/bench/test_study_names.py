"""A study's name becomes a folder (reports/<name>) and MLflow names: one that could leave reports/ is refused.

Checked in the study file's schema (bench.spec) and again where reports/<name> is built (bench.report).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.report import report_folder
from bench.spec import STUDY_NAME_RULE, load_spec
from tests.bench.helpers import run_cli

SMOKE = Path(__file__).resolve().parents[2] / "studies" / "smoke.toml"
BAD = ["../../x", "a/b", "..", ".hidden", "-flag", "x\\u0000y", "a b", "a\\\\b", "", "x" * 65, "naïve"]


def _study(tmp_path: Path, name: str) -> Path:
    text = SMOKE.read_text()
    assert 'name = "smoke"' in text
    path = tmp_path / "study.toml"
    path.write_text(text.replace('name = "smoke"', f'name = "{name}"'))
    return path


@pytest.mark.parametrize("name", ["smoke", "ci-broken", "rd_tiny", "v1.2", "A", "x" * 64])
def test_plain_names_are_accepted(tmp_path, name):
    assert load_spec(str(_study(tmp_path, name))).name == name


@pytest.mark.parametrize("name", BAD)
def test_names_that_are_not_plain_words_are_refused(tmp_path, name):
    with pytest.raises(BenchError, match=f"study.name must be {STUDY_NAME_RULE}, got"):
        load_spec(str(_study(tmp_path, name)))


def test_the_report_folder_is_checked_where_it_is_built():
    assert report_folder("smoke") == Path("reports/smoke")
    assert report_folder("../x", "elsewhere") == Path("elsewhere")  # --report-dir is the user's own path
    for name in ("../x", "a/b", "/etc"):
        with pytest.raises(BenchError, match="study name .* is not allowed"):
            report_folder(name)


def test_the_cli_refuses_a_path_like_name_with_one_line_and_writes_nothing(tmp_path):
    study = _study(tmp_path, "../../x")
    proc = run_cli(["--study", str(study), "--no-progress", "--workers", "1"], tmp_path, timeout=180)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {study}: study.name must be {STUDY_NAME_RULE}, got '../../x'"]
    assert [p.name for p in tmp_path.iterdir()] == ["study.toml"]
    assert not (tmp_path.parent.parent / "x").exists()
