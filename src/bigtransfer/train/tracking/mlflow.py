"""MLflow: one MLflow run per run folder, in the experiment MLFLOW_EXPERIMENT_NAME (default "bigtransfer") of the
store MLFLOW_TRACKING_URI names, with the config as params, the metrics by step, and model/, metrics.json and the
PNGs as artifacts. Its id is kept in the run folder, so --resume continues the same MLflow run.

bigtransfer talks to MLflow through an `MlflowClient`, never the fluent API's global active run: a fine-tune
started from a script or notebook leaves the caller's own MLflow run alone."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..._util.package import optional_import
from .base import Tracker, flat_config, save_run_id, saved_run_id

DEFAULT_EXPERIMENT = "bigtransfer"
DATABASES = ("sqlite", "postgresql", "mysql", "mssql")  # stores that need SQLAlchemy (not in mlflow-skinny)


def check() -> None:
    """The store MLflow would use can be opened: said in one line before the run starts, with the fix.

    MLflow 3 keeps runs in a folder (its file store) only when MLFLOW_ALLOW_FILE_STORE=true: bigtransfer does not
    set that for the user, as it is MLflow's deliberate opt-in to a store it no longer develops, and an environment
    variable set here would also change the caller's own MLflow calls in the same process."""
    mlflow = optional_import("mlflow", "Reporting to MLflow (--report-to mlflow) needs mlflow", "mlflow")
    opt_in = getattr(mlflow.environment_variables, "MLFLOW_ALLOW_FILE_STORE", None)  # MLflow 3's; before, always

    uri = mlflow.get_tracking_uri()
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme in ("", "file") and opt_in is not None and not opt_in.get():
        raise ValueError(
            f"MLflow {mlflow.__version__} writes to the folder {uri} (its file store) only with "
            "MLFLOW_ALLOW_FILE_STORE=true: set that, or point MLFLOW_TRACKING_URI at a tracking server (http://…)."
        )
    if scheme in DATABASES and importlib.util.find_spec("sqlalchemy") is None:
        where = "MLFLOW_TRACKING_URI" if "MLFLOW_TRACKING_URI" in os.environ else "MLflow's default store"
        raise ValueError(
            f"{where} {uri} is a database, which needs the full mlflow package (pip install mlflow): or set "
            "MLFLOW_TRACKING_URI to a tracking server (http://…), or to a folder with MLFLOW_ALLOW_FILE_STORE=true."
        )


class MLflowTracker(Tracker):
    name = "MLflow"

    def __init__(self, out: Path, config: dict[str, Any], resume: bool):
        from mlflow import MlflowClient
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        self.client = MlflowClient()
        run_id = saved_run_id(out, "mlflow") if resume else None
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self.client.create_run(self._experiment_id(), run_name=out.resolve().name).info.run_id
            save_run_id(out, "mlflow", run_id)
            params = [Param(key, str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in flat_config(config).items()]
            self.client.log_batch(run_id, params=params)  # params are immutable: logged once, by the first session
        self.run_id = run_id

    def _experiment_id(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        return experiment.experiment_id if experiment is not None else self.client.create_experiment(name)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in metrics.items()])

    def log_images(self, images: dict[str, Path], step: int) -> None:
        for path in images.values():
            self.client.log_artifact(self.run_id, str(path), "plots")

    def finish(self, final: dict[str, float], model_dir: Path, report: Path) -> None:
        self.client.log_artifacts(self.run_id, str(model_dir), model_dir.name)
        self.client.log_artifact(self.run_id, str(report))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)
