"""CLI commands for after the search: dashboard, report, retrain (registered on tuner.cli.app)."""

from __future__ import annotations
