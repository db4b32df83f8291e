"""Daily watch on what the deployed model hears: `ser monitor` on the last day of the inference log.

    monitor

`monitor` runs `ser monitor --end <end of the run's data interval>` in the project folder
(whose `params.yaml` sets the window and thresholds, and whose
`models/monitor_reference.parquet`, written by the train stage, is the reference). The
task fails, red in the UI, when the window drifted (`ser monitor` exits 1) and is not
retried: drift is a finding, not a hiccup. The report lands in `reports/monitor/` of
the project and in an MLflow run `monitor`. docs/monitoring.md has the thresholds.

| name                    | default                                                 | read at    |
|-------------------------|---------------------------------------------------------|------------|
| `monitor_project`       | the repository holding this `dags/` folder              | run time   |
| `inference_log`         | env `SER_INFERENCE_LOG`, else `monitor.log` of the params | run time |
| `mlflow_tracking_uri`   | env `MLFLOW_TRACKING_URI`, else `mlflow.db` of the project | run time |
| `monitor_schedule`      | `@daily`                                                | parse time |

Each is the Airflow Variable `ser_<name>`, else the environment variable `SER_<NAME>`.
"""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, get_current_context, task

from ser.ops.airflow_settings import setting

DAG_ID = "ser_monitor"
HOME_REPOSITORY = Path(__file__).resolve().parents[1]


def monitor_command(project: Path, end: datetime) -> str:
    """``ser monitor`` in ``project`` for the window ending at ``end``, with the settings."""
    command = ["ser", "monitor", "--end", end.astimezone(UTC).isoformat()]
    if destination := setting("inference_log", env="SER_INFERENCE_LOG"):
        command += ["--log", destination]
    tracking = setting(
        "mlflow_tracking_uri", f"sqlite:///{project / 'mlflow.db'}", env="MLFLOW_TRACKING_URI"
    )
    return (
        f"export MLFLOW_TRACKING_URI={shlex.quote(tracking)} && "
        f"cd {shlex.quote(str(project))} && {shlex.join(command)}"
    )


@task.bash(retries=0, execution_timeout=timedelta(minutes=30))
def monitor() -> str:
    """Compare the day's inference log with the training data; fail on drift (exit 1)."""
    dag_run = get_current_context()["dag_run"]
    end = dag_run.data_interval_end or dag_run.logical_date or dag_run.run_after
    return monitor_command(Path(setting("monitor_project") or HOME_REPOSITORY), end)


with DAG(
    dag_id=DAG_ID,
    schedule=setting("monitor_schedule", "@daily"),
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ser", "monitoring"],
):
    monitor()
