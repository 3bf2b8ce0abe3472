"""Dataset classes for recbole-gen models, looked up as ``<Model>Dataset`` by ``create_dataset``."""
