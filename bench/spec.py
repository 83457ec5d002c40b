"""Study files (`studies/*.toml`) read into frozen, pydantic-validated dataclasses before anything runs.

`load_spec("latent")` finds a shipped study by name, `load_spec("path/to.toml")` reads a file;
every problem is a BenchError naming the file, the key and what is allowed. `file_schema()` is
the JSON schema of a study file, published as studies/schema.json for editors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import tomllib
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import field, fields
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

from bench.errors import BenchError, HelpFormatter, cli_main
from bench.metrics import optimizable
from vae.checks import bounds_of, number_phrase
from vae.data import DATASET_FOLDERS, DataConfig
from vae.model import ModelConfig
from vae.train import TrainConfig

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
SCHEMA_PATH = STUDIES_DIR / "schema.json"

# metric -> direction in which it improves: the per-epoch keys a study can optimise (bench.metrics)
METRIC_DIRECTIONS = {**optimizable("train"), **optimizable("val")}
Metric = Literal[tuple(METRIC_DIRECTIONS)]
Direction = Literal["maximize", "minimize"]
# every one of them handles two objectives in Optuna 5 (TPE, GP by hypervolume, NSGA-II, random, grid)
Sampler = Literal["tpe", "random", "grid", "gp", "nsga2"]
Pruner = Literal["median", "hyperband", "none"]
BaselineKind = Literal["ae", "pca"]
OodDataset = Literal[tuple(sorted(DATASET_FOLDERS))]
BASELINES = get_args(BaselineKind)
MODEL_FIELDS = {f.name for f in fields(ModelConfig)}
TRAIN_FIELDS = {f.name for f in fields(TrainConfig)} - {"seed"}
MAX_SEED = 2**32 - 1  # TrainConfig's bound
MAX_REPLICATES = 1000

NonNegativeInt = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
# values as TOML writes them: no "3" for 3, no true for 1, no nan; lists arrive as tuples
spec_dataclass = dataclass(frozen=True, config=ConfigDict(strict=True, extra="forbid", allow_inf_nan=False))


@spec_dataclass
class SamplerSpec:
    """Which Optuna sampler proposes trials."""

    where: ClassVar[str] = "sampler."  # how errors name the keys

    type: Sampler = "tpe"
    seed: NonNegativeInt | None = 0  # None: a fresh random seed each run


@spec_dataclass
class PrunerSpec:
    """Which Optuna pruner stops unpromising trials, judged on the per-epoch metric."""

    where: ClassVar[str] = "pruner."

    type: Pruner = "median"
    n_warmup_steps: NonNegativeInt = 2  # epochs reported before a trial may be pruned (median)
    n_startup_trials: NonNegativeInt = 3  # trials finished before pruning starts (median)


@spec_dataclass
class SearchParam:
    """One searched config field: categorical choices, or an int/float range."""

    where: ClassVar[str] = "[search.{name}]: "

    name: str  # a ModelConfig or TrainConfig field
    type: Literal["categorical", "int", "float"]
    choices: tuple[int | float | str | bool, ...] | None = None
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: Annotated[int, Field(gt=0)] | Annotated[float, Field(gt=0)] | None = None
    # categorical only: each choice is a stratum of the search, tuned on its own with the same budget
    # ([study] trials_per_stratum), its own sampler seed and its own pruning (bench.strata)
    strata: bool = False
    # categorical only, for a search without strata: one trial per choice first, each run in full (never pruned)
    cover: bool = False

    def __post_init__(self) -> None:
        where = f"search.{self.name}"
        if self.cover and self.type != "categorical":
            raise ValueError(f"[{where}]: cover = true needs type = 'categorical' (one trial per choice)")
        if self.strata and self.type != "categorical":
            raise ValueError(f"[{where}]: strata = true needs type = 'categorical' (each choice is a stratum)")
        if self.name not in MODEL_FIELDS | TRAIN_FIELDS:
            allowed = ", ".join(sorted(MODEL_FIELDS | TRAIN_FIELDS))
            raise ValueError(f"[{where}]: {self.name!r} is not a config field; searchable fields: {allowed}")
        if self.type == "categorical":
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError(f"[{where}]: a categorical parameter needs a non-empty 'choices' list and no low/high")
            for c in self.choices:
                _check_value(self.name, c, where)
            return
        if self.choices is not None:
            raise ValueError(f"[{where}]: 'choices' is only for type = 'categorical'")
        if self.low is None or self.high is None:
            raise ValueError(f"[{where}]: type = {self.type!r} needs a low and a high")
        for k in ("low", "high", "step") if self.type == "int" else ():
            v = getattr(self, k)  # pydantic has made it an int, a float or None
            if v is not None and not isinstance(v, int):
                raise ValueError(f"[{where}]: {k} must be an integer, got {v!r}")
        if self.low > self.high:
            raise ValueError(f"[{where}]: low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"[{where}]: log = true needs low > 0, got {self.low}")
        if self.log and self.step is not None and self.type == "float":
            raise ValueError(f"[{where}]: step and log = true cannot be combined for floats")
        _check_value(self.name, int(self.low) if self.type == "int" else float(self.low), where)
        _check_value(self.name, int(self.high) if self.type == "int" else float(self.high), where)

    def grid_values(self) -> list[Any]:
        """All values, for the grid sampler: the choices, or the stepped range."""
        if self.type == "categorical":
            return list(self.choices)
        if self.step is None:
            if self.type == "int" and not self.log:
                return list(range(self.low, self.high + 1))
            raise ValueError(f"[search.{self.name}]: the grid sampler needs 'choices' or a 'step'")
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [self.low + i * self.step for i in range(n)]


def _check_value(name: str, value: Any, where: str) -> None:
    """Build the config that owns `name` with `value`, so its own checks judge it."""
    cls = ModelConfig if name in MODEL_FIELDS else TrainConfig
    try:
        cls(**{name: value})
    except ValueError as exc:
        raise ValueError(f"[{where}]: {exc}") from None


@spec_dataclass
class EvalSpec:
    """How finished trials are evaluated on the test set."""

    where: ClassVar[str] = "eval."

    iw_samples: Annotated[int, Field(ge=1, le=100_000)] = 100  # k of the importance-weighted NLL (test/nll_iw)
    iw_images: Annotated[int, Field(ge=1)] | None = (
        None  # test images used for test/nll_iw (and per set for test/ood_auroc); None = all
    )
    paper_protocol: bool = (
        False  # also score the best VAE with k = 5000 on the full test set (test/nll_iw_k5000): minutes on a CPU
    )
    ood_dataset: OodDataset | None = (
        None  # the other dataset whose test images test/ood_auroc scores as OOD; None = no OOD check
    )


@spec_dataclass
class BaselineSpec:
    """Which baselines are compared with the best VAE at each latent size."""

    where: ClassVar[str] = "baselines."

    models: tuple[BaselineKind, ...] = ()  # each at most once
    fd_samples: Annotated[int, Field(ge=100, le=100_000)] = 5000  # generated images per model for test/sample_fd

    @field_validator("models", mode="before")
    @classmethod
    def _known(cls, models: Any) -> Any:
        for m in models if isinstance(models, tuple) else ():
            if m not in BASELINES:
                raise ValueError(f"baselines.models: {m!r} is not a baseline; choose from {', '.join(BASELINES)}")
        return models

    def __post_init__(self) -> None:
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"baselines.models lists a model twice: {list(self.models)}")


_SEED = TypeAdapter(Seed, config=ConfigDict(strict=True))


@spec_dataclass
class ReplicateSpec:
    """Seed replicates of each compared configuration, trained after the search.

    `seeds` is a count N (seeds train.seed + 1 .. train.seed + N, never the search's own
    seed) or an explicit list of distinct seeds; None: no replicates.
    """

    where: ClassVar[str] = ""

    seeds: Annotated[int, Field(ge=1, le=MAX_REPLICATES)] | Annotated[tuple[Seed, ...], Field(min_length=1)] | None = (
        None
    )

    @field_validator("seeds", mode="wrap")
    @classmethod
    def _say_which(cls, seeds: Any, handler: Any) -> Any:
        """The declared types judge; the message says whether the count or a listed seed is wrong."""
        try:
            return handler(seeds)
        except ValidationError:
            if not isinstance(seeds, tuple):
                raise ValueError(
                    f"seeds must be a count in [1, {MAX_REPLICATES}] or a list of seeds, got {seeds!r}"
                ) from None
            if not seeds:
                raise ValueError("seeds must be a count >= 1 or a non-empty list of seeds, got []") from None
            for v in seeds:
                try:
                    _SEED.validate_python(v)
                except ValidationError:
                    raise ValueError(f"seeds: every seed must be an integer in [0, {MAX_SEED}], got {v!r}") from None
            raise

    def __post_init__(self) -> None:
        s = self.seeds
        if isinstance(s, tuple):
            dup = sorted({v for v in s if s.count(v) > 1})
            if dup:
                raise ValueError(f"seeds lists seed {', '.join(map(str, dup))} more than once: {list(s)}")

    def resolve(self, search_seed: int) -> tuple[int, ...]:
        """The seeds to train: the list as given, or search_seed + 1 .. search_seed + N."""
        if self.seeds is None:
            return ()
        if isinstance(self.seeds, tuple):
            return self.seeds
        return tuple(range(search_seed + 1, search_seed + self.seeds + 1))


STUDY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
STUDY_NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', the first a letter or digit"  # the pattern in words


def check_study_name(name: str) -> str:
    """`name` when it is a valid study name (STUDY_NAME_PATTERN), else a BenchError: it is used in paths."""
    if not re.fullmatch(STUDY_NAME_PATTERN, name):
        raise BenchError(f"study name {name!r} is not allowed: use {STUDY_NAME_RULE}")
    return name


@spec_dataclass
class StudySpec:
    """A whole study: what is searched, on what data, how trials are judged and compared."""

    where: ClassVar[str] = "study."

    # becomes a folder (reports/<name>), an MLflow experiment and model names: a plain word, no
    # path separators, no '..', nothing a shell or a URL would read differently
    name: Annotated[str, Field(pattern=STUDY_NAME_PATTERN)]
    # reported each epoch and optimised; a list of keys makes a multi-objective study (e.g. the
    # rate-distortion frontier: ["val/kl", "val/recon_bce"]) whose trials are never pruned
    metric: Metric | tuple[Metric, ...] = "val/elbo"
    # None: each metric's declared direction (bench.metrics); given, it must agree with it
    direction: Direction | tuple[Direction, ...] | None = None
    n_trials: Annotated[int, Field(ge=1, le=100_000)] = 10  # trials in total, across every worker and every resume
    # with a strata parameter: trials of each stratum (n_trials is then this times the strata, derived)
    trials_per_stratum: Annotated[int, Field(ge=1, le=10_000)] | None = None
    timeout_s: Annotated[float, Field(gt=0)] | None = None  # stop starting new trials after this many seconds
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: tuple[SearchParam, ...] = ()
    eval: EvalSpec = field(default_factory=EvalSpec)
    baselines: BaselineSpec = field(default_factory=BaselineSpec)
    replicates: ReplicateSpec = field(default_factory=ReplicateSpec)
    path: Path | None = None  # the file it was read from
    text: str = ""  # the file's text, logged with the study
    experiment: str | None = (
        None  # the MLflow experiment; None: the study's name (search-seed studies share their base's)
    )

    def __post_init__(self) -> None:
        self._check_objectives()
        if self.eval.ood_dataset == self.data.dataset:
            raise ValueError(
                f"eval.ood_dataset must differ from data.dataset ({self.data.dataset}): "
                "it is the dataset the model has not seen"
            )
        seeds = self.replicate_seeds
        if self.train.seed in seeds:
            raise ValueError(
                f"replicates.seeds includes {self.train.seed}, the search's train.seed: a replicate must not "
                "reuse the draw the best trial was selected on; choose other seeds"
            )
        if seeds and seeds[-1] > MAX_SEED:
            raise ValueError(f"replicates.seeds: train.seed + {len(seeds)} exceeds {MAX_SEED}")
        if self.eval.paper_protocol and self.data.test_limit is not None:
            raise ValueError(
                "eval.paper_protocol scores the full 10,000-image test set; remove data.test_limit "
                f"(it is {self.data.test_limit}) or set paper_protocol = false"
            )
        covered = [p.name for p in self.search if p.cover]
        if len(covered) > 1:
            raise ValueError(f"cover = true on {', '.join(covered)}: at most one searched parameter may be covered")
        stratified = [p for p in self.search if p.strata]
        if covered and stratified:
            raise ValueError(
                f"cover = true on {covered[0]} and strata = true on {stratified[0].name}: "
                "a stratified search gives every choice its own trials already; drop cover"
            )
        if len(stratified) > 1:
            raise ValueError(
                f"strata = true on {', '.join(p.name for p in stratified)}: "
                "at most one searched parameter may be the strata"
            )
        if stratified and self.trials_per_stratum is None:
            raise ValueError(
                f"[search.{stratified[0].name}] strata = true needs study.trials_per_stratum "
                "(the budget of each choice)"
            )
        if self.trials_per_stratum is not None and not stratified:
            raise ValueError("study.trials_per_stratum needs a categorical search parameter with strata = true")
        if stratified and self.pruner.type == "hyperband":
            raise ValueError(
                "study.pruner: hyperband keeps its rungs on each trial, which a stratum's pruning "
                "(bench.strata) does not carry yet; use the median pruner or none with strata = true"
            )
        if stratified:
            # derived, never given: every stratum gets the same budget
            object.__setattr__(self, "n_trials", self.trials_per_stratum * len(stratified[0].choices))
        if self.sampler.type == "grid":
            for p in self.search:
                p.grid_values()

    def _check_objectives(self) -> None:
        many = isinstance(self.metric, tuple)
        keys = self.objectives
        if many and (len(keys) < 2 or len(set(keys)) != len(keys)):
            raise ValueError(f"study.metric: a list needs at least two different metrics, got {list(keys)}")
        for k in keys:
            if k.startswith("val/") and self.data.val_size == 0:
                raise ValueError(
                    f"study.metric {k} needs a validation split; set data.val_size > 0 or use a train/ metric"
                )
        if len({k.split("/")[0] for k in keys}) > 1:
            raise ValueError(f"study.metric: the objectives must come from one split, got {list(keys)}")
        given = self.direction
        if given is not None:
            if many != isinstance(given, tuple) or (many and len(given) != len(keys)):
                raise ValueError(
                    f"study.direction: {len(keys)} metric(s) need {len(keys)} direction(s), got {given!r}; "
                    f"use direction = {list(self.directions) if many else self.directions[0]!r} or leave it out"
                )
            for k, d in zip(keys, given if many else (given,), strict=False):
                if d != METRIC_DIRECTIONS[k]:
                    raise ValueError(
                        f"study.direction: {k} improves when it goes the other way; "
                        f"use direction = {METRIC_DIRECTIONS[k]!r}"
                    )
        if many and self.pruner.type != "none":
            raise ValueError(
                f"study.pruner: Optuna cannot prune a multi-objective study ({', '.join(keys)}); "
                'set pruner = { type = "none" } or leave it out'
            )

    @property
    def objectives(self) -> tuple[str, ...]:
        """The optimised metric keys: one, or several for a multi-objective study."""
        return self.metric if isinstance(self.metric, tuple) else (self.metric,)

    @property
    def directions(self) -> tuple[str, ...]:
        """Optuna's direction of each objective, as declared in bench.metrics."""
        return tuple(METRIC_DIRECTIONS[k] for k in self.objectives)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def split(self) -> str:
        """The split the objectives are measured on ("val" or "train")."""
        return self.objectives[0].split("/")[0]

    @property
    def replicate_seeds(self) -> tuple[int, ...]:
        """The seeds each compared configuration is trained again with; () without replicates."""
        return self.replicates.resolve(self.train.seed)

    @property
    def searched(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.search)

    @property
    def coverage_trials(self) -> list[dict[str, Any]]:
        """The fixed parameters of the trials queued first: one per choice of the covered parameter."""
        return [{p.name: c} for p in self.search if p.cover for c in p.choices]

    @property
    def strata_param(self) -> SearchParam | None:
        """The categorical parameter whose choices are the strata of the search, if any."""
        return next((p for p in self.search if p.strata), None)

    @property
    def strata(self) -> tuple[Any, ...]:
        """The strata (the strata parameter's choices), () for an unstratified search."""
        p = self.strata_param
        return tuple(p.choices) if p is not None else ()

    @property
    def latent_sizes(self) -> tuple[int, ...]:
        """Latent sizes the study can reach: the searched choices/range, or the fixed one."""
        for p in self.search:
            if p.name == "latent_dim":
                return tuple(p.grid_values()) if p.type == "categorical" or p.step else (p.low, p.high)
        return (self.model.latent_dim,)

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    def for_search(self, index: int) -> StudySpec:
        """Search `index` of --search-seeds: search 0 is the study itself; search i the same study searched with
        sampler seed + i, as its own Optuna study `<name>-search<i>` in the same storage and MLflow experiment."""
        if index == 0:
            return self
        seed = None if self.sampler.seed is None else self.sampler.seed + index
        return _replace(
            self,
            name=f"{self.name}-search{index}",
            experiment=self.name,
            sampler=_replace(self.sampler, seed=seed, where="--search-seeds"),
            where="--search-seeds",
        )

    def with_overrides(self, **overrides: Any) -> StudySpec:
        """Apply CLI overrides (n_trials, trials_per_stratum, epochs, timeout_s, seed, replicates) that are not None."""
        o = {k: v for k, v in overrides.items() if v is not None}
        spec = self
        if "n_trials" in o:
            if spec.strata_param is not None:
                raise BenchError(
                    f"--n-trials: study {spec.name!r} gives each {spec.strata_param.name} the same budget; "
                    f"use --trials-per-stratum "
                    f"(now {spec.trials_per_stratum} x {len(spec.strata)} strata = {spec.n_trials} trials)"
                )
            spec = _replace(spec, n_trials=o["n_trials"])
        if "trials_per_stratum" in o:
            if spec.strata_param is None:
                raise BenchError(
                    f"--trials-per-stratum: study {spec.name!r} has no search parameter with strata = true; "
                    "use --n-trials"
                )
            spec = _replace(spec, trials_per_stratum=o["trials_per_stratum"])
        if "timeout_s" in o:
            spec = _replace(spec, timeout_s=o["timeout_s"], where="--timeout")
        if "epochs" in o:
            spec = _replace(spec, train=_replace(spec.train, epochs=o["epochs"], where="--epochs"))
        if "seed" in o:
            spec = _replace(
                spec,
                train=_replace(spec.train, seed=o["seed"], where="--seed"),
                sampler=_replace(spec.sampler, seed=o["seed"], where="--seed"),
                where="--seed",
            )
        if "replicates" in o:
            try:
                # 0 turns a study file's replicates off, the way a user runs a study quickly
                replicates = _new(ReplicateSpec, {"seeds": o["replicates"] or None})
            except ValueError as exc:
                raise BenchError(f"--replicates: {exc}") from None
            spec = _replace(spec, replicates=replicates, where="--replicates")
        return spec


def _replace(obj: Any, where: str | None = None, **changes: Any) -> Any:
    try:
        with _one_line(type(obj), changes):
            return dataclasses.replace(obj, **changes)
    except ValueError as exc:
        raise BenchError(f"{where or ', '.join('--' + k.replace('_', '-') for k in changes)}: {exc}") from None


# ---------------------------------------------------------------- reading files

SECTIONS = {"study", "data", "model", "train", "search", "eval", "baselines", "replicates"}
STUDY_KEYS = (
    "name",
    "metric",
    "direction",
    "n_trials",
    "trials_per_stratum",
    "timeout_s",
    "sampler",
    "pruner",
)  # [study], in schema order


def available_studies() -> list[str]:
    """Names of the studies shipped in studies/."""
    return sorted(p.stem for p in STUDIES_DIR.glob("*.toml"))


def resolve_study(name_or_path: str) -> Path:
    """A shipped study's file by name, or a path to a TOML file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or "/" in name_or_path or p.is_file():
        if not p.is_file():
            raise BenchError(f"study file {name_or_path} does not exist")
        return p
    shipped = STUDIES_DIR / f"{name_or_path}.toml"
    if not shipped.is_file():
        raise BenchError(
            f"unknown study {name_or_path!r}; available: {', '.join(available_studies())} "
            "(or pass a path to a .toml file)"
        )
    return shipped


def load_spec(name_or_path: str) -> StudySpec:
    """Read and validate a study file; raises BenchError naming the file on any problem."""
    path = resolve_study(name_or_path)
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{path}: TOML syntax error: {exc}") from None
    try:
        return parse_spec(raw, default_name=path.stem, path=path, text=text)
    except (ValueError, TypeError) as exc:
        raise BenchError(f"{path}: {exc}") from None


def _table(raw: dict, key: str) -> dict:
    v = raw.get(key, {})
    if not isinstance(v, dict):
        raise ValueError(f"[{key}] must be a table, got {type(v).__name__}")
    return v


def _build(cls: type, section: str, values: dict) -> Any:
    """cls(**values) after refusing unknown keys; lists become tuples."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown key(s) in [{section}]: {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    vals = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return _new(cls, vals)
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith("[") else f"[{section}] {msg}") from None


def parse_spec(raw: dict, default_name: str, path: Path | None = None, text: str = "") -> StudySpec:
    """Turn a parsed TOML document into a StudySpec; raises ValueError on any problem."""
    unknown = sorted(set(raw) - SECTIONS)
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)}; allowed: {', '.join(sorted(SECTIONS))}")
    study = _table(raw, "study")
    bad = sorted(set(study) - set(STUDY_KEYS))
    if bad:
        raise ValueError(f"unknown key(s) in [study]: {', '.join(bad)}; allowed: {', '.join(sorted(STUDY_KEYS))}")
    if "n_trials" in study and "trials_per_stratum" in study:
        raise ValueError(
            "[study] gives n_trials and trials_per_stratum; "
            "a stratified study's n_trials is derived: keep trials_per_stratum"
        )
    sampler = _build(SamplerSpec, "study.sampler", _table(study, "sampler"))
    # a multi-objective study cannot be pruned: left out, its pruner is "none" rather than "median"
    no_pruner = {"type": "none"} if isinstance(study.get("metric"), list) and "pruner" not in study else {}
    pruner = _build(PrunerSpec, "study.pruner", _table(study, "pruner") or no_pruner)
    data = _build(DataConfig, "data", _table(raw, "data"))
    model = _build(ModelConfig, "model", _table(raw, "model"))
    train = _build(TrainConfig, "train", _table(raw, "train"))
    search = []
    for name, p in _table(raw, "search").items():
        if not isinstance(p, dict):
            raise ValueError(f"[search.{name}] must be a table with a 'type'")
        if "type" not in p:
            raise ValueError(f"[search.{name}] needs a 'type': categorical, int or float")
        search.append(_build(SearchParam, f"search.{name}", {**p, "name": name}))
    evals = _build(EvalSpec, "eval", _table(raw, "eval"))
    baselines = _build(BaselineSpec, "baselines", _table(raw, "baselines"))
    replicates = _build(ReplicateSpec, "replicates", _table(raw, "replicates"))
    top = {k: tuple(v) if isinstance(v, list) else v for k, v in study.items() if k not in ("sampler", "pruner")}
    return _new(
        StudySpec,
        {
            "name": default_name,
            **top,
            "sampler": sampler,
            "pruner": pruner,
            "data": data,
            "model": model,
            "train": train,
            "search": tuple(search),
            "eval": evals,
            "baselines": baselines,
            "replicates": replicates,
            "path": path,
            "text": text,
        },
    )


# ---------------------------------------------------------------- the schema of a study file


def file_schema() -> dict[str, Any]:
    """The JSON schema of a study file, made from the models above; studies/schema.json is this.

    A study file nests what StudySpec holds flat: [study] carries the top-level keys, and each
    [search.NAME] table is a SearchParam whose name is the table's.
    """
    spec = TypeAdapter(StudySpec).json_schema()
    defs, props = spec["$defs"], spec["properties"]
    for name in ("DataConfig", "ModelConfig", "TrainConfig"):  # plain dataclasses; _build refuses unknown keys
        defs[name]["additionalProperties"] = False
    param = defs["SearchParam"]
    del param["properties"]["name"]
    param["required"].remove("name")
    table = {"type": "object", "additionalProperties": False}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "vaebench study file",
        "description": "studies/*.toml, read by bench.spec.load_spec; "
        "written by bench.spec.file_schema (python -m bench.spec).",
        **table,
        "properties": {
            "study": {**table, "properties": {k: props[k] for k in STUDY_KEYS}},
            **{k: props[k] for k in ("data", "model", "train")},
            "search": {"type": "object", "additionalProperties": {"$ref": "#/$defs/SearchParam"}},
            **{k: props[k] for k in ("eval", "baselines", "replicates")},
        },
        "$defs": defs,
    }


def schema_text() -> str:
    """studies/schema.json as it should read."""
    return json.dumps(file_schema(), indent=2) + "\n"


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Write studies/schema.json, the JSON schema of a study file, again after a model in bench.spec or vae changed."""
    p = argparse.ArgumentParser(prog="python -m bench.spec", description=main.__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, default=SCHEMA_PATH, help="where to write the JSON schema of a study file")
    args = p.parse_args(argv)
    args.out.write_text(schema_text(), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------- pydantic's complaints as one line


def _new(cls: type, values: dict[str, Any]) -> Any:
    """cls(**values); a ValueError in the words of the study file on any problem."""
    with _one_line(cls, values):
        return cls(**values)


@contextmanager
def _one_line(cls: type, values: dict[str, Any]) -> Iterator[None]:
    """Turn pydantic's first complaint into one line: the key, what is allowed, the value given."""
    try:
        yield
    except ValidationError as exc:
        e = exc.errors()[0]
        if e["type"] == "value_error":  # raised by a check of ours, already worded that way
            raise ValueError(str(e["ctx"]["error"])) from None
        name = e["loc"][0] if e["loc"] else ""
        where = cls.where.format(name=values.get("name"))
        if name not in cls.__pydantic_fields__:
            raise ValueError(f"{where}{name}: {e['msg']}") from None
        f = cls.__pydantic_fields__[name]
        allowed = _allowed(f.annotation, f.metadata) + (" of seconds" if name.endswith("_s") else "")
        value = values.get(name, e["input"])
        value = list(value) if isinstance(value, tuple) else value  # as the file wrote it
        raise ValueError(f"{where}{name} must be {allowed}, got {value!r}") from None


def _allowed(tp: Any, meta: list[Any] = ()) -> str:
    """What a value of annotation tp (with constraints meta) may be, as a TOML file writes it."""
    if get_origin(tp) is Annotated:
        tp, *more = get_args(tp)
        return _allowed(tp, [*meta, *more])
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        bases = [get_args(a)[0] if get_origin(a) is Annotated else a for a in args]
        if set(bases) <= {int, float}:  # int | float: any number
            first = get_args(args[0])[1:] if get_origin(args[0]) is Annotated else ()
            return _allowed(float if float in bases else int, [*meta, *first])
        if len(args) == 2 and get_origin(args[1]) is tuple and get_args(args[1])[0] == args[0]:
            return f"{_allowed(args[0])} (or a list of them)"
        return " or ".join(_allowed(a) for a in args)
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    if tp is bool:
        return "true or false"
    if tp in (int, float):
        flat = [x for m in meta for x in (m.metadata if isinstance(m, FieldInfo) else [m])]
        return number_phrase(tp, bounds_of(flat))
    if tp is str:
        pattern = next((m.pattern for m in meta if getattr(m, "pattern", None)), None)
        if pattern:
            return STUDY_NAME_RULE if pattern == STUDY_NAME_PATTERN else f"a string matching {pattern}"
        return "a non-empty string" if any(getattr(m, "min_length", 0) for m in meta) else "a string"
    if get_origin(tp) is tuple:
        return "a list"
    return getattr(tp, "__name__", str(tp))


if __name__ == "__main__":
    sys.exit(main())
