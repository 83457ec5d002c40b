"""The one vocabulary of names besides metric keys: MLflow run tags, Optuna attributes, image keys.

Every module that writes or reads one of these names imports it from here (metric keys live in
bench.metrics); a name never gets a second meaning.
"""

from __future__ import annotations

# ----------------------------------------------------------------- MLflow run tags
ROLE = "vaebench.role"  # "study" on the parent run, "trial" on a VAE trial, "baseline" on an AE / PCA run
STUDY = "study"  # the study's name, on every run
MODEL = "model"  # "vae", "ae" or "pca" on every child run (not on the parent)
LATENT_DIM = "latent_dim"  # the child run's latent size, as a tag so the UI can group by it
TRIAL_NUMBER = "trial_number"  # the Optuna trial number of a VAE trial run
COVERAGE = "coverage"  # "true" on trials queued to cover a choice (never pruned), else "false"
STRATUM = "stratum"  # on a trial of a stratified search: "<param>=<choice>", the stratum it tuned (group by it)
STRATUM_INDEX = "stratum_trial"  # on a trial of a stratified search: its index in its stratum (0, 1, ...)
OPTUNA_STATE = "optuna_state"  # the trial's Optuna state: COMPLETE or PRUNED (a pruned run closes KILLED)
FAIL_REASON = "fail_reason"  # why a run closed FAILED or KILLED, one line
FAILURE = "vaebench.failure"  # "infrastructure" on a run closed because a service or its worker was lost, not the model
INFRASTRUCTURE = "infrastructure"
COMPARED = "compared"  # "true" on the runs in the comparison: the best VAE per latent size and its baselines
VAE_RUN_ID = "vae_run_id"  # on a baseline: the run of the VAE it is compared with
MODEL_URI = "model_uri"  # the run's logged model (models:/m-...), loadable with mlflow.pyfunc.load_model
REGISTERED_AS = "registered_as"  # on a registered VAE: models:/<name>@<alias>
BEST_ALIAS = "best"  # the model registry alias of the best VAE at each latent size (bench.describe.registered_name)
OOD_DATASET = "ood_dataset"  # on each compared run with test/ood_auroc: the dataset it scored as out-of-distribution
N_TRIALS = "n_trials"  # on the parent: the study's trials in total as of its latest run (a resume may raise it)
TRIALS_PER_STRATUM = "trials_per_stratum"  # on the parent of a stratified study: each stratum's trials, as n_trials
BEST_TRIAL = "best_trial"  # on the parent: the best trial's number
BEST_RUN_ID = "best_run_id"  # on the parent: the best trial's run id
BEST_PARAM = "best.{name}"  # on the parent: the best trial's value of each searched parameter
STUDY_UID = "optuna_study_uid"  # on the parent: the Optuna study's uid, how workers find the parent
GATE = "vaebench.gate"  # "true" on the parent of a regression-gate run
SEED = "seed"  # a replicate's or gate run's seed: training, binarization, FD draws, corruption noise
REPLICATE_OF = "replicate_of"  # on a replicate: MLflow run id of the best trial whose configuration it repeats
REPLICATE_OF_TRIAL = "replicate_of_trial"  # on a replicate: that trial's number
GIT_COMMIT = "git_commit"  # the project's commit ('-dirty' with local changes)
DATASET = "dataset"  # "mnist" or "fashion-mnist"
DATASET_DIGEST = "dataset_digest"  # sha256 prefix of the raw image bytes (vae.data.Datasets.digest)
DEVICE = "device"  # where the model was trained
WORKER = "worker"  # on every run of every role: host:pid of the process that made it (bench.workers.worker_id)
TORCH_VERSION = "torch_version"
# MLflow's own tags
NOTE = "mlflow.note.content"  # the description of a run or experiment, shown on its page
PARENT_RUN = "mlflow.parentRunId"
INPUT_CONTEXT = "mlflow.data.context"  # on a logged dataset input: training, validation or testing

REPLICATE_ROLE = "replicate"  # a compared configuration trained again with another seed (bench.replicates)
GATE_ROLE = "gate"  # a seed of the regression gate (bench.check)
PRUNED_SUFFIX = " (pruned)"  # appended to a pruned trial's run name, so the runs table shows it

# ----------------------------------------------------------------- Optuna attributes
# trial user attributes
RUN_ID_ATTR = "mlflow_run_id"  # the trial's MLflow run
WORKER_ATTR = "worker"  # host:pid of the process that ran the trial
FAIL_REASON_ATTR = "fail_reason"  # why the trial failed or went non-finite
INFRA_FAILURE_ATTR = (
    "infra_failure"  # on a trial failed because a service was lost mid-trial (the reason); it is queued again
)
TEST_METRICS_ATTR = "test_metrics"  # the trial's test/* metrics, {key: value}
COVERAGE_ATTR = "coverage"  # True on the queued trials that cover a parameter's choices: never pruned
STRATUM_ATTR = "stratum"  # the strata parameter's value of a trial in a stratified search (bench.strata)
STRATUM_INDEX_ATTR = (
    "stratum_index"  # the trial's index in its stratum: its sampler seed and its place in the stratum's order
)
SURPLUS_ATTR = "surplus"  # True on a trial beyond n_trials that a worker did not run
# study user attributes
PARENT_ATTR = "mlflow_parent_run_id"  # the study's MLflow parent run
UID_ATTR = "study_uid"  # the study's uid, mirrored in the parent's STUDY_UID tag
FINGERPRINT_ATTR = "fingerprint"  # {field: value} of every setting that changes results (bench.fingerprint)

# ----------------------------------------------------------------- images
# keys of mlflow.log_image(key=..., step=epoch), the same for VAE, AE and PCA, so the chart
# view's image grid shows the three models side by side at any step
SAMPLES = "samples"  # 64 generated images (VAE: prior; AE, PCA: Gaussian fitted to their codes)
RECONSTRUCTIONS = "reconstructions"  # 16 test images above their deterministic reconstructions
IMAGE_KEYS = (SAMPLES, RECONSTRUCTIONS)
# plain PNG files of the final model; not under images/ (log_image's folder, whose key parser
# in the UI breaks on other files)
GRIDS = "grids"
LATENT_SCATTER = "latent_scatter"  # 2-D latents only: test codes coloured by class
LATENT_MANIFOLD = "latent_manifold"  # 2-D latents only: decoded grid of prior quantiles


def grid_file(name: str) -> str:
    """The artifact path of a plain grid file, e.g. grids/samples.png."""
    return f"{GRIDS}/{name}.png"
