"""The run layer: a configuration, building a run from it, the single-process loops, the run
directory (metrics, summary, checkpoints), compare and eval. The CLI is a thin shell over it."""
