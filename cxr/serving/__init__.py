"""Using a trained model: loading it (predictors), the MLflow pyfunc and the predict command."""
