"""Where loradex keeps things: the registry database, blobs, caches, and which Hub it talks to.

Resolution order for each setting: explicit argument (CLI option), environment variable, default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"


def default_home() -> Path:
    """The loradex home folder: ``$LORADEX_HOME`` or ``~/.loradex``."""
    return Path(os.environ.get("LORADEX_HOME") or Path.home() / ".loradex").expanduser()


@dataclass(frozen=True)
class Settings:
    """Resolved settings for one process."""

    home: Path = field(default_factory=default_home, metadata={"help": "loradex home folder"})
    db_url: str = field(default="", metadata={"help": "SQLAlchemy URL of the registry"})
    endpoint: str = field(default=DEFAULT_ENDPOINT, metadata={"help": "Hub endpoint URL"})
    token: str | None = field(default=None, metadata={"help": "Hub token for writes"})

    @property
    def cache_dir(self) -> Path:
        """Where pulled adapters are cached (a huggingface_hub cache layout)."""
        return self.home / "cache"

    @property
    def blobs_dir(self) -> Path:
        """Where the built-in server keeps its content-addressed blobs by default."""
        return self.home / "blobs"

    @classmethod
    def resolve(
        cls,
        db: str | None = None,
        home: str | os.PathLike[str] | None = None,
        endpoint: str | None = None,
        token: str | None = None,
    ) -> Settings:
        """Settings from explicit values, then ``LORADEX_*`` variables, then defaults."""
        home_path = Path(home).expanduser() if home else default_home()
        db_url = db or os.environ.get("LORADEX_DB") or f"sqlite:///{home_path / 'registry.db'}"
        ep = (
            endpoint
            or os.environ.get("LORADEX_ENDPOINT")
            or os.environ.get("HF_ENDPOINT")
            or DEFAULT_ENDPOINT
        ).rstrip("/")
        tok = token or os.environ.get("LORADEX_TOKEN") or os.environ.get("HF_TOKEN")
        return cls(home=home_path, db_url=db_url, endpoint=ep, token=tok)
