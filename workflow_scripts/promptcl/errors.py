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
