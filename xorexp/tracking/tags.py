"""The names xorexp writes into a store: run and experiment tags, artifact paths, the model's name.

Pure constants, importing nothing: the summary, the reports and the tests read runs by these names
without importing MLflow.
"""

# tags of a training run
TAG_OUTCOME = "xorexp.outcome"  # solved / stuck / diverged
TAG_HASH = "xorexp.config_hash"  # params.config_hash of its six params
TAG_OVERRIDES = "xorexp.overrides"  # the Hydra overrides of its job
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_PARENT = "mlflow.parentRunId"  # its sweep's parent run
TAG_ORPHAN = "xorexp.orphan"  # a sweep run no job owns: ended FAILED at the sweep's end, not summarised
TAG_TRIAL = "xorexp.trial"  # the trial number under a search sweeper
TAG_JOB = "xorexp.job"  # its job's number in the sweep (Hydra's job.num): with the parent, names the job
TAG_HOST = "xorexp.host"  # the writing process: tells a crashed writer's RUNNING run from a live one
TAG_PID = "xorexp.pid"
TAG_REPLAY_OF = "xorexp.replay_of"  # on a run made by ``python -m xorexp.replay --log``

# tags of a sweep's parent run
TAG_ROLE = "xorexp.role"  # "sweep" on a multirun's parent run
ROLE_SWEEP = "sweep"
TAG_SWEEP = "xorexp.sweep"  # the sweep preset (or "overrides")
TAG_REUSED = "xorexp.reused_runs"  # how many FINISHED runs were reused, not retrained
TAG_BEST_RUN = "xorexp.best_run_id"
TAG_BEST_PREFIX = "xorexp.best."  # xorexp.best.<key>: the best group's value of each param
TAG_BEST_MODEL = "xorexp.best_model"  # runs:/<best run id>/model
TAG_NOTE = "mlflow.note.content"  # a run's description in the MLflow UI (Markdown)

# MLflow 3.17's UI reads this experiment tag: without it an experiment counts as GenAI (its runs shown
# as "Evaluations"); this value makes it a model-training experiment (runs, charts, artifacts).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# artifacts
PARAMS_ARTIFACT = "model/params.npz"  # every run: W1, B1, W2, B2 as trained
MODEL_NAME = "model"  # the MLflow model of a run (single runs, a sweep's best run): runs:/<id>/model
PREDICTIONS_ARTIFACT = "predictions.json"
CONFIG_ARTIFACT = "config.yaml"  # the job's resolved config
TRACEBACK_ARTIFACT = "error/traceback.txt"  # a FAILED run's traceback
REUSED_ARTIFACT = "reused_runs.json"  # on a parent: ids of the FINISHED runs the sweep reused
