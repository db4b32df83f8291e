"""tune stage: choose the CNN's hyperparameters and write them where train reads them."""

from __future__ import annotations

import logging

import mlflow

from ser import paths
from ser.artifacts import write_json
from ser.config import ModelParams, Params
from ser.tracking import stage_run

log = logging.getLogger(__name__)


def run(params: Params) -> ModelParams:
    """With ``tune.enabled: false`` the model section of params.yaml is the choice."""
    chosen = params.model
    with stage_run("tune", params):
        mlflow.set_tag("tune.source", "params.yaml (tune.enabled is false)")
        mlflow.log_params({f"chosen.{k}": v for k, v in chosen.model_dump().items()})
        write_json(paths.HYPERPARAMS, chosen.model_dump(mode="json"))
        mlflow.log_artifact(str(paths.HYPERPARAMS))
    log.info("hyperparameters from params.yaml written to %s", paths.HYPERPARAMS)
    return chosen
