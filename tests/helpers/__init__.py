"""Helpers shared by the test modules (never imported from one test module into another)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
