"""Using a trained model: ``ser predict`` (``predict``), the MLflow Model served by
``mlflow models serve`` (``mlflow_model``), the Model Registry (``registry``) and the one
quality gate that decides promotion (``gate``)."""
