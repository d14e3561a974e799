"""Figures (matplotlib, PNG): per run, across runs and of the prompt-impact study."""
