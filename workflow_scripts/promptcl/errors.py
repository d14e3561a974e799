"""Errors every layer raises and the Snakefile reports, and the checks of files a config names:
a module of its own that imports nothing of the project, so a backend or a method can refuse a
config without importing the DAG."""

from pathlib import Path


class ConfigError(ValueError):
    """The config is well-typed but inconsistent; the message names the key."""


def hf_folder(key: str, value: str | None, base: Path) -> None:
    """A Hugging Face model folder the config names (checked now; loaded by a job)."""
    if not value:
        raise ConfigError(f"{key}: a Hugging Face model folder is required")
    path = Path(value).expanduser()
    found = [p for p in ([path] if path.is_absolute() else [path, base / path]) if p.is_dir()]
    if not found:
        raise ConfigError(f"{key}: folder {path} does not exist")
    if not (found[0] / "config.json").is_file():
        raise ConfigError(f"{key}: {found[0]} is not a Hugging Face model folder (no config.json)")


def check_accumulation_keys(grad_accum: int | None, global_batch_size: int | None) -> None:
    """The one rule of ``training.grad_accum`` and ``training.global_batch_size``: at most one
    is set (checked when the workflow is parsed, and again by the stage job)."""
    if grad_accum is not None and global_batch_size is not None:
        raise ConfigError(
            "training: set either training.grad_accum or training.global_batch_size, not both "
            "(global_batch_size derives the accumulation from the process count; "
            f"grad_accum={grad_accum}, global_batch_size={global_batch_size})"
        )
