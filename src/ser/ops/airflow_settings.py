"""How the DAGs in ``dags/`` read a setting: an Airflow Variable, else the environment."""

from __future__ import annotations

import os


def setting(name: str, default: str | None = None, env: str | None = None) -> str | None:
    """Airflow Variable ``ser_<name>``, else environment variable ``env`` (``SER_<NAME>``), else ``default``.

    Without a metadata database (e.g. ``DagBag`` in tests) only ``AIRFLOW_VAR_*``
    environment variables are seen as Variables, so parsing never fails.
    """
    from airflow.sdk import Variable

    value = Variable.get(f"ser_{name}", default=None)
    if not value:
        value = os.environ.get(env or f"SER_{name.upper()}")
    return value or default
