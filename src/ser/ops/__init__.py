"""Operations around the pipeline: MLflow runs (``tracking``), the DVC remote
(``remote``), atomic writes (``atomic``) and the offline page of ``dvc plots``
(``plots_page``)."""
