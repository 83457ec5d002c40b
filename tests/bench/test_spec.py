"""bench.spec: the shipped studies load as written, overrides and grids behave, inconsistent studies are refused.

In-process and fast: no training, no MLflow, no Optuna storage.
"""

from __future__ import annotations

import json
import tomllib

import pytest
from jsonschema import Draft202012Validator

from bench.errors import BenchError
from bench.spec import (
    SCHEMA_PATH,
    STUDIES_DIR,
    SearchParam,
    StudySpec,
    available_studies,
    load_spec,
    main,
    parse_spec,
    schema_text,
)
from vae.data import DataConfig

SMOKE = (STUDIES_DIR / "smoke.toml").read_text()


def smoke_raw() -> dict:
    return tomllib.loads((STUDIES_DIR / "smoke.toml").read_text())


@pytest.mark.parametrize("name", ["latent", "smoke", "seed"])
def test_shipped_study_loads_by_name(name):
    assert name in available_studies()
    spec = load_spec(name)
    assert spec.name == name
    assert spec.path == STUDIES_DIR / f"{name}.toml"
    assert spec.text == (STUDIES_DIR / f"{name}.toml").read_text()
    assert spec.metric == "val/elbo" and spec.direction == "maximize"


def test_latent_study_searches_size_width_and_kl_weight():
    spec = load_spec("latent")
    assert spec.searched == ("latent_dim", "hidden_width", "beta")
    latent, width, beta = spec.search
    assert latent.type == "categorical" and latent.choices == (2, 4, 8, 16, 32, 64)
    assert (width.type, width.low, width.high, width.log) == ("int", 64, 1024, True)
    assert (beta.type, beta.low, beta.high, beta.log) == ("float", 0.25, 4.0, True)
    assert spec.latent_sizes == (2, 4, 8, 16, 32, 64)
    assert latent.strata and not width.strata and not beta.strata  # every size tuned with the same budget
    assert spec.strata_param is latent and spec.coverage_trials == []
    assert spec.trials_per_stratum == 5 and spec.n_trials == 30 and spec.train.epochs == 8
    assert (spec.pruner.type, spec.pruner.n_warmup_steps, spec.pruner.n_startup_trials) == ("median", 2, 2)
    assert spec.baselines.models == ("ae", "pca")
    assert spec.replicate_seeds == (1, 2, 3)  # 3 replicates, none with the search's seed 0


def test_seed_study_is_the_fixed_seed_network():
    spec = load_spec("seed")
    assert spec.search == ()
    assert (spec.model.latent_dim, spec.model.hidden_width, spec.model.hidden_layers) == (2, 32, 1)
    assert spec.data.binarize == "none"
    assert spec.latent_sizes == (2,)
    assert spec.n_trials == 1 and spec.train.epochs == 10


def test_smoke_study_is_tiny():
    spec = load_spec("smoke")
    assert spec.n_trials == 3 and spec.train.epochs == 2
    assert (spec.data.limit, spec.data.test_limit, spec.data.val_size) == (2000, 1000, 500)
    assert spec.latent_sizes == (2, 4)
    assert spec.replicate_seeds == (1, 2)


def test_replicates_count_follows_the_training_seed_and_a_list_is_taken_as_given():
    spec = load_spec("smoke")
    assert spec.with_overrides(seed=10).replicate_seeds == (11, 12)
    assert spec.with_overrides(replicates=4).replicate_seeds == (1, 2, 3, 4)
    assert spec.with_overrides(replicates=1, seed=7).replicate_seeds == (8,)
    raw = smoke_raw()
    raw["replicates"] = {"seeds": [13, 11, 12]}
    assert parse_spec(raw, "x").replicate_seeds == (13, 11, 12)
    del raw["replicates"]
    assert parse_spec(raw, "x").replicate_seeds == ()  # no section: no replicates
    assert load_spec("seed").replicate_seeds == ()


@pytest.mark.parametrize(
    "seeds, message",
    [
        (0, r"\[replicates\] seeds must be a count in \[1, 1000\] or a list of seeds, got 0"),
        (-2, r"\[replicates\] seeds must be a count .* got -2"),
        (2.5, r"\[replicates\] seeds must be a count .* got 2.5"),
        ("3", r"\[replicates\] seeds must be a count .* got '3'"),
        (True, r"\[replicates\] seeds must be a count .* got True"),
        ([], r"\[replicates\] seeds must be a count >= 1 or a non-empty list"),
        ([3, -1], r"\[replicates\] seeds: every seed must be an integer in \[0, 4294967295\], got -1"),
        ([3, 1.5], r"every seed must be an integer .* got 1.5"),
        ([5, 6, 5, 7, 6], r"\[replicates\] seeds lists seed 5, 6 more than once: \[5, 6, 5, 7, 6\]"),
        ([0, 1], r"replicates.seeds includes 0, the search's train.seed"),
    ],
)
def test_bad_replicates_are_refused_with_the_key(seeds, message):
    raw = smoke_raw()
    raw["replicates"] = {"seeds": seeds}
    with pytest.raises(ValueError, match=message):
        parse_spec(raw, "x")


def test_replicates_flag_0_turns_the_study_files_replicates_off_and_a_negative_count_is_refused():
    assert load_spec("latent").replicate_seeds == (1, 2, 3)
    assert load_spec("latent").with_overrides(replicates=0).replicate_seeds == ()
    assert load_spec("latent").with_overrides(replicates=2).replicate_seeds == (1, 2)
    with pytest.raises(BenchError, match=r"^--replicates: seeds must be a count in \[1, 1000\] .* got -1$"):
        load_spec("smoke").with_overrides(replicates=-1)


def test_a_paper_protocol_on_a_cut_test_set_is_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(SMOKE.replace("[eval]\n", "[eval]\npaper_protocol = true\n"))
    with pytest.raises(
        BenchError, match=rf"^{path}: eval.paper_protocol scores the full 10,000-image test set; remove data.test_limit"
    ):
        load_spec(str(path))


def test_burda_study_is_the_papers_one_layer_vae_scored_with_their_protocol():
    spec = load_spec("burda")
    m = spec.model
    assert (m.hidden_layers, m.hidden_width, m.latent_dim, m.activation, m.beta) == (2, 200, 50, "tanh", 1.0)
    assert spec.data.binarize == "dynamic" and spec.data.test_limit is None and spec.data.limit is None
    assert spec.train.batch_size == 20 and spec.eval.paper_protocol and spec.search == ()
    assert not load_spec("latent").eval.paper_protocol  # off unless a study asks for it


def test_study_name_resolves_from_another_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_spec("smoke").path == STUDIES_DIR / "smoke.toml"
    # a folder in the working directory that happens to share a study's name does not hide it
    (tmp_path / "latent").mkdir()
    assert load_spec("latent").path == STUDIES_DIR / "latent.toml"
    # a relative path to a file is read from the working directory
    (tmp_path / "mine.toml").write_text('[study]\nname = "mine"\n[train]\nepochs = 3\n')
    spec = load_spec("mine.toml")
    assert spec.name == "mine" and spec.train.epochs == 3


def test_study_name_defaults_to_the_file_name(tmp_path):
    path = tmp_path / "quick.toml"
    path.write_text("[train]\nepochs = 1\n")
    assert load_spec(str(path)).name == "quick"


def test_missing_file_and_unknown_name_are_bench_errors(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_spec(str(tmp_path / "absent.toml"))
    with pytest.raises(
        BenchError, match=r"unknown study 'nope'; available: burda, ci, fashion, latent, rd, seed, smoke"
    ):
        load_spec("nope")


def test_overrides_replace_only_what_is_given():
    spec = load_spec("smoke")
    assert spec.with_overrides(n_trials=None, epochs=None, timeout_s=None, seed=None) == spec
    o = spec.with_overrides(n_trials=7, epochs=5, timeout_s=60.0, seed=11)
    assert (o.n_trials, o.train.epochs, o.timeout_s) == (7, 5, 60.0)
    assert o.train.seed == 11 and o.sampler.seed == 11  # one seed for weights and for the sampler
    assert o.train.lr == spec.train.lr and o.search == spec.search and o.model == spec.model
    assert spec.n_trials == 3  # the original is untouched (frozen)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochs": 0}, r"--epochs: epochs must be an integer in \[1, 100000\], got 0"),
        ({"n_trials": 0}, r"--n-trials: study.n_trials must be an integer in \[1, 100000\], got 0"),
        ({"timeout_s": -1.0}, r"--timeout: study.timeout_s must be a positive number"),
        ({"seed": -1}, r"--seed: seed must be an integer"),
    ],
)
def test_bad_override_is_a_bench_error_naming_the_flag(overrides, message):
    with pytest.raises(BenchError, match=message):
        load_spec("smoke").with_overrides(**overrides)


def test_grid_values():
    assert SearchParam("latent_dim", "categorical", choices=(2, 8)).grid_values() == [2, 8]
    assert SearchParam("hidden_layers", "int", low=1, high=3).grid_values() == [1, 2, 3]
    assert SearchParam("hidden_width", "int", low=32, high=128, step=32).grid_values() == [32, 64, 96, 128]
    beta = SearchParam("beta", "float", low=0.5, high=2.0, step=0.5).grid_values()
    assert beta == pytest.approx([0.5, 1.0, 1.5, 2.0])
    lr = SearchParam("lr", "float", low=0.1, high=0.3, step=0.1).grid_values()  # 0.2 / 0.1 is 1.9999...
    assert lr == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"\[search.beta\]: the grid sampler needs 'choices' or a 'step'"):
        SearchParam("beta", "float", low=0.5, high=2.0).grid_values()
    with pytest.raises(ValueError, match="grid sampler needs"):
        SearchParam("hidden_width", "int", low=32, high=128, log=True).grid_values()


def test_grid_sampler_study_needs_finite_grids():
    raw = smoke_raw()
    raw["study"]["sampler"] = {"type": "grid", "seed": 0}
    with pytest.raises(ValueError, match=r"\[search.hidden_width\]: the grid sampler needs"):
        parse_spec(raw, "g")
    raw["search"]["beta"] = {"type": "float", "low": 0.5, "high": 1.5, "step": 0.5}
    raw["search"]["hidden_width"] = {"type": "categorical", "choices": [32, 64]}
    spec = parse_spec(raw, "g")
    assert [p.grid_values() for p in spec.search] == [[2, 4], [32, 64], [0.5, 1.0, 1.5]]


@pytest.mark.parametrize(
    "metric, direction, fix",
    [
        ("val/elbo", "minimize", "'maximize'"),
        ("val/kl", "maximize", "'minimize'"),
        ("train/recon_bce", "maximize", "'minimize'"),
    ],
)
def test_direction_must_match_the_metric(metric, direction, fix):
    raw = smoke_raw()
    raw["study"].update(metric=metric, direction=direction)
    with pytest.raises(
        ValueError, match=f"study.direction: {metric} improves when it goes the other way; use direction = {fix}"
    ):
        parse_spec(raw, "x")


def test_two_metrics_make_a_multi_objective_study_with_declared_directions():
    raw = smoke_raw()
    del raw["study"]["direction"], raw["study"]["pruner"]
    raw["study"]["metric"] = ["val/kl", "val/recon_bce"]
    spec = parse_spec(raw, "rd")
    assert spec.objectives == ("val/kl", "val/recon_bce") and spec.directions == ("minimize", "minimize")
    assert spec.multi_objective and spec.split == "val"
    assert spec.pruner.type == "none"  # left out: a multi-objective study has no pruner
    raw["study"]["direction"] = ["minimize", "minimize"]
    assert parse_spec(raw, "rd").directions == ("minimize", "minimize")
    single = parse_spec({"study": {"metric": "val/kl"}}, "one")  # no direction: the declared one
    assert single.directions == ("minimize",) and not single.multi_objective


@pytest.mark.parametrize(
    "study, message",
    [
        (
            {"metric": ["val/kl", "val/recon_bce"], "direction": "minimize"},
            r"2 metric\(s\) need 2 direction\(s\), got 'minimize'",
        ),
        ({"metric": ["val/kl", "val/recon_bce"], "direction": ["minimize"]}, r"2 metric\(s\) need 2 direction\(s\)"),
        (
            {"metric": ["val/kl", "val/recon_bce"], "direction": ["minimize", "maximize"]},
            r"val/recon_bce improves when it goes the other way",
        ),
        ({"metric": "val/kl", "direction": ["minimize"]}, r"1 metric\(s\) need 1 direction\(s\)"),
        ({"metric": ["val/kl", "val/kl"]}, r"at least two different metrics"),
        ({"metric": ["val/kl", "train/recon_bce"]}, r"the objectives must come from one split"),
        ({"metric": ["val/kl", "test/kl"]}, r"study.metric must be one of"),
        (
            {"metric": ["val/kl", "val/recon_bce"], "pruner": {"type": "median"}},
            r"Optuna cannot prune a multi-objective study",
        ),
    ],
)
def test_inconsistent_objectives_are_refused(study, message):
    with pytest.raises(ValueError, match=message):
        parse_spec({"study": study}, "x")


def test_ood_dataset_must_be_another_known_dataset():
    assert parse_spec({"eval": {"ood_dataset": "fashion-mnist"}}, "x").eval.ood_dataset == "fashion-mnist"
    with pytest.raises(ValueError, match="must differ from data.dataset"):
        parse_spec({"eval": {"ood_dataset": "mnist"}}, "x")
    with pytest.raises(ValueError, match="eval.ood_dataset must be one of fashion-mnist, mnist, got 'cifar10'"):
        parse_spec({"eval": {"ood_dataset": "cifar10"}}, "x")


@pytest.mark.parametrize(
    "name, objectives, ood", [("rd", ("val/kl", "val/recon_bce"), "fashion-mnist"), ("fashion", ("val/elbo",), "mnist")]
)
def test_frontier_and_ood_studies_load(name, objectives, ood):
    spec = load_spec(name)
    assert spec.objectives == objectives and spec.eval.ood_dataset == ood
    assert spec.pruner.type == "none" or not spec.multi_objective


def test_val_metric_needs_a_validation_split():
    raw = smoke_raw()
    raw["data"]["val_size"] = 0
    with pytest.raises(ValueError, match="study.metric val/elbo needs a validation split"):
        parse_spec(raw, "x")
    raw["study"]["metric"] = "train/elbo"
    spec = parse_spec(raw, "x")
    assert spec.metric == "train/elbo" and spec.data.val_size == 0


def test_defaults_apply_to_a_minimal_file():
    spec = parse_spec({}, "bare")
    assert spec == StudySpec(name="bare")
    assert spec.data == DataConfig() and spec.search == ()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"search": {"depth": {"type": "int", "low": 1, "high": 2}}}, r"'depth' is not a config field"),
        ({"search": {"beta": {"low": 1.0, "high": 2.0}}}, r"\[search.beta\] needs a 'type'"),
        ({"search": {"beta": {"type": "float", "low": 0.0, "high": 2.0, "log": True}}}, r"log = true needs low > 0"),
        ({"search": {"latent_dim": {"type": "categorical", "choices": []}}}, r"non-empty 'choices'"),
        (
            {"search": {"latent_dim": {"type": "categorical", "choices": [2, 0]}}},
            r"latent_dim must be an integer in \[1, 4096\], got 0",
        ),
        ({"study": {"sampler": {"type": "cmaes"}}}, r"sampler.type must be one of tpe, random, grid, gp"),
        (
            {"study": {"pruner": {"type": "median", "n_warmup_steps": -1}}},
            r"pruner.n_warmup_steps must be a non-negative integer",
        ),
        ({"study": {"n_trials": 1.5}}, r"study.n_trials must be an integer"),
        ({"study": {"metric": "test/elbo"}}, r"study.metric must be one of"),
        ({"baselines": {"models": ["ae", "ae"]}}, r"lists a model twice"),
        ({"baselines": {"models": ["vae"]}}, r"'vae' is not a baseline"),
        ({"eval": {"iw_samples": 0}}, r"eval.iw_samples must be an integer in \[1, 100000\]"),
        ({"eval": {"paper_protocol": "yes"}}, r"eval.paper_protocol must be true or false"),
        ({"model": {"beta": -1.0}}, r"\[model\] beta must be a number in \[0, 1000\]"),
        ({"train": {"lr": 0}}, r"\[train\] lr must be a number in \(0, 10\]"),
        ({"data": {"binarize": "static"}}, r"\[data\] binarize must be 'none' or 'dynamic'"),
        ({"model": []}, r"\[model\] must be a table"),
        (
            {"search": {"beta": {"type": "float", "low": 1.0, "high": 2.0, "cover": True}}},
            r"cover = true needs type = 'categorical'",
        ),
        (
            {"search": {"latent_dim": {"type": "categorical", "choices": [2], "cover": 1}}},
            r"cover must be true or false",
        ),
        (
            {
                "search": {
                    "latent_dim": {"type": "categorical", "choices": [2, 4], "cover": True},
                    "hidden_width": {"type": "categorical", "choices": [32, 64], "cover": True},
                }
            },
            r"at most one searched parameter may be covered",
        ),
    ],
)
def test_inconsistent_study_is_refused_with_the_key(change, message):
    raw = smoke_raw()
    for section, value in change.items():
        if isinstance(value, dict) and isinstance(raw.get(section), dict) and section != "search":
            raw[section] = {**raw[section], **value}
        else:
            raw[section] = value
    with pytest.raises(ValueError, match=message):
        parse_spec(raw, "x")


def test_load_spec_names_the_file_in_every_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepochs = 0\n")
    with pytest.raises(BenchError) as info:
        load_spec(str(path))
    assert str(info.value) == f"{path}: [train] epochs must be an integer in [1, 100000], got 0"


# ---------------------------------------------------------------- the published schema


def test_published_schema_is_the_one_the_models_make(tmp_path, capsys):
    # Compared as parsed JSON, not as text: the order of keys inside an object follows the pydantic
    # version that wrote the file (2.13 and 2.14 place "additionalProperties" differently), and
    # key order means nothing to a JSON schema. Lists (required, enum, ...) still compare in order.
    published = json.loads(SCHEMA_PATH.read_text())
    assert published == json.loads(schema_text()), "studies/schema.json is stale: run python -m bench.spec"
    assert main(["--out", str(tmp_path / "schema.json")]) == 0
    assert json.loads((tmp_path / "schema.json").read_text()) == published
    assert capsys.readouterr().out == f"wrote {tmp_path / 'schema.json'}\n"


def test_schema_comparison_sees_a_changed_value_but_not_key_order():
    published = json.loads(SCHEMA_PATH.read_text())
    reordered = json.loads(json.dumps(published, sort_keys=True))  # the same schema, keys in another order
    assert reordered == published and json.dumps(reordered) != json.dumps(published)
    changed = json.loads(schema_text())
    changed["$defs"]["TrainConfig"]["properties"]["epochs"]["maximum"] += 1  # a real difference
    assert changed != published


@pytest.mark.parametrize("name", available_studies())
def test_every_shipped_study_validates_against_the_schema_it_names(name):
    text = (STUDIES_DIR / f"{name}.toml").read_text()
    assert text.startswith("#:schema ./schema.json\n")  # the editor hint (Taplo, Even Better TOML)
    validator = Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    assert [e.message for e in validator.iter_errors(tomllib.loads(text))] == []


@pytest.mark.parametrize(
    "section, values",
    [
        ("train", {"epochs": 0}),
        ("train", {"learning_rate": 0.1}),
        ("model", {"activation": "sigmoid"}),
        ("data", {"limit": 0}),
        ("study", {"metric": "test/elbo"}),
        ("study", {"sampler": {"type": "cmaes"}}),
        ("eval", {"ood_dataset": "cifar10"}),
        ("baselines", {"models": ["vae"]}),
        ("replicates", {"seeds": 0}),
        ("search", {"beta": {"type": "float", "low": 1.0, "high": 2.0, "step": -1}}),
        ("optimizer", {"name": "adam"}),
    ],
)
def test_schema_refuses_what_load_spec_refuses(section, values):
    raw = smoke_raw()
    raw[section] = {**raw.get(section, {}), **values}
    validator = Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    assert list(validator.iter_errors(raw)), "the schema accepted it"
    with pytest.raises(ValueError):
        parse_spec(raw, "x")
