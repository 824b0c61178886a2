"""cml-infra: cloud GPUs for CI runners that appear when a workflow needs them and die after."""

__version__ = "0.1.0"
