# The image every Airflow service of docker-compose.yaml runs: Airflow 3.3 on Python 3.11 (what
# pyproject.toml requires) with this project and its dependencies, so that tasks can run `dvc`,
# `git` and `ser`. `docker compose build` builds it; docs/docker.md says what was checked here.
FROM apache/airflow:3.3.2-python3.11

# The dependencies first, read from pyproject.toml and installed at the versions requirements.lock
# pins (the ones `make install` installs), so that a code change reuses this layer. Pinning
# apache-airflow to the image's own version (AIRFLOW_VERSION, set by the base image, which
# tests/test_lock.py checks against the lock) keeps pip from moving it. The base image installs
# as the non-root user `airflow`, and so do we.
COPY --chown=airflow:0 pyproject.toml requirements.lock /opt/ser/
RUN python -c "import tomllib; print(*tomllib.load(open('/opt/ser/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/requirements.txt \
    && pip install --no-cache-dir -c /opt/ser/requirements.lock "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The package itself (the `ser` command the stages of dvc.yaml run); README.md is its long description.
COPY --chown=airflow:0 README.md /opt/ser/README.md
COPY --chown=airflow:0 src /opt/ser/src
RUN pip install --no-cache-dir --no-deps /opt/ser \
    && ser --help > /dev/null \
    && dvc --version \
    && git --version

# Folders that docker-compose.yaml mounts named volumes on: a new volume takes the image's folder,
# so the owner and group 0 (any AIRFLOW_UID runs with group 0) may write to it.
RUN mkdir -p /opt/airflow/config /opt/airflow/runs /opt/airflow/mlflow \
    && chmod 775 /opt/airflow/config /opt/airflow/runs /opt/airflow/mlflow
