"""Training, pure PyTorch: tuner's own loop (``fit(params, ctx) -> metric``), the small ``ctx``
every loop receives, what a process prepares once for all its trials (``assets``), same-shape
trials trained as one (``fuse``), recipes, transfer learning and secondary metrics. Nothing here
imports Optuna, the database or the CLI (an import-linter contract)."""
