"""Operations around the pipeline: MLflow runs (``tracking``), the DVC remote
(``remote``), atomic writes (``atomic``), the offline page of ``dvc plots``
(``plots_page``) and local services stopped whole on Ctrl-C (``supervise``)."""
