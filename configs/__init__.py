"""ml_collections configs: `get_config(arg)` per method, the task chosen by the arg after ':'."""
