"""The fingerprint of a study: every setting that changes its results, stored with the Optuna study.

`open_study` stamps it on a new study and compares it on every resume: a rerun whose study file,
overriding flags, data or code major version differ is refused (BenchError naming the first field).
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import optuna

from bench import tags as T
from bench.errors import BenchError
from bench.spec import StudySpec

# what may change between runs of one study: how many trials (and how long) only; more replicate
# seeds are an extension of the ending as more trials are of the search (bench.finalize trains the new ones)
GROWABLE = ("replicates.seeds",)
DIGEST_FIELD = "data.digest"  # the raw images' digest (vae.data.Datasets.digest), not a study file key
CODE_FIELD = "code.major_version"  # results may change with a new major version of vaebench


def fingerprint(spec: StudySpec, data_digest: str) -> dict[str, Any]:
    """The flat {field: value} of the study, as written after the command line's overrides, in file order."""
    fields: dict[str, Any] = {"study.metric": spec.metric, "study.direction": spec.direction}
    for section in ("sampler", "pruner"):
        fields.update(_flat(f"study.{section}", getattr(spec, section)))
    for section in ("data", "model", "train"):
        fields.update(_flat(section, getattr(spec, section)))
    for param in spec.search:
        fields.update(_flat(f"search.{param.name}", param))
    for section in ("eval", "baselines"):
        fields.update(_flat(section, getattr(spec, section)))
    fields["replicates.seeds"] = list(spec.replicate_seeds)
    fields[DIGEST_FIELD] = data_digest
    fields[CODE_FIELD] = code_major_version()
    return json.loads(json.dumps(fields))  # tuples -> lists, as the storage gives them back


def _flat(prefix: str, obj: Any) -> dict[str, Any]:
    return {f"{prefix}.{f.name}": getattr(obj, f.name) for f in dataclasses.fields(obj)}


@lru_cache(maxsize=1)
def code_major_version() -> int:
    """The major of vaebench's version: pyproject.toml beside this checkout, else the installed package's."""
    import tomllib
    from importlib import metadata

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        version = tomllib.loads(pyproject.read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        version = metadata.version("vaebench")
    return int(version.split(".")[0])


def first_difference(stored: dict[str, Any], now: dict[str, Any]) -> str | None:
    """'train.epochs: stored 1, now 3' for the first field (in `now`'s order) that differs, else None."""
    for key in [*now, *(k for k in stored if k not in now)]:
        old, new = stored.get(key, "(absent)"), now.get(key, "(absent)")
        if old == new or (key in GROWABLE and _extends(old, new)):
            continue
        return f"{key}: stored {_show(old)}, now {_show(new)}"
    return None


def _extends(old: Any, new: Any) -> bool:
    return isinstance(old, list) and isinstance(new, list) and new[: len(old)] == old


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) or value is None else str(value)


def stamp_or_check(study: optuna.Study, fields: dict[str, Any], created: bool, where: str) -> None:
    """Store the fingerprint on a new study; on a resumed one, refuse a difference or adopt a missing one.

    `where` names the storage in the refusal. A study made before fingerprints (none stored) adopts
    this run's, with a one-line notice when it already has trials (a worker joining a study made a
    moment ago by this same command sees none yet).
    """
    stored = study.user_attrs.get(T.FINGERPRINT_ATTR)
    if created or stored is None:
        if stored is None and not created and study.get_trials(deepcopy=False):
            print(
                f"notice: study {study.study_name!r} in {where} has no fingerprint (made before vaebench "
                "stored one); it adopts this run's settings, and later runs must match them",
                flush=True,
            )
        study.set_user_attr(T.FINGERPRINT_ATTR, fields)
        return
    diff = first_difference(stored, fields)
    if diff is not None:
        raise BenchError(
            f"the study {study.study_name!r} in {where} was run with other settings ({diff}); "
            "it cannot be resumed with these: use another --storage, or another study name ([study] name)"
        )
    if stored != fields:  # more replicate seeds: the stored fingerprint says what ran from now on
        study.set_user_attr(T.FINGERPRINT_ATTR, fields)
