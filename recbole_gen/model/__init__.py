"""recbole-gen's models (listed in ``recbole_gen.utils.PLUGIN_MODELS``, imported on demand)."""
