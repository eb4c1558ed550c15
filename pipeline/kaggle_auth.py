"""Kaggle credentials: where the kaggle package will find them, in its own order, named in
messages by where they were found, never by value; and masking them out of anything printed.

This module reads the environment, against the package's habit, because the kaggle package reads
its credentials from there: it looks where kaggle will look, to explain what is missing.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .config import UserError

TOKEN_PAGE = "https://www.kaggle.com/settings/api"
NO_CREDENTIALS = (
    "No Kaggle API credentials found. Create a token at " + TOKEN_PAGE + " and provide it as "
    "KAGGLE_API_TOKEN=<token>, or save it to ~/.kaggle/access_token, or put kaggle.json in "
    "~/.kaggle/ (or $KAGGLE_CONFIG_DIR), or set KAGGLE_USERNAME and KAGGLE_KEY."
)

@dataclass(frozen=True)
class Credentials:
    """Where kaggle finds credentials (named in messages), and their values (only to mask them)."""

    source: str  # e.g. "KAGGLE_API_TOKEN", "/home/me/.kaggle/kaggle.json"
    config_dir: Path  # where kaggle.json is looked for
    secrets: tuple[str, ...] = field(default=(), repr=False)
    warnings: tuple[str, ...] = ()


def config_dir() -> Path:
    """The kaggle package's config directory: $KAGGLE_CONFIG_DIR, ~/.kaggle, or ~/.config/kaggle."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    home = Path(os.path.expanduser("~/.kaggle"))
    if sys.platform.startswith("linux") and not home.exists():
        xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        return Path(xdg) / "kaggle"
    return home


def find_credentials() -> Credentials | None:
    """The credentials the kaggle package will use, in its own order, or None if there are none.

    Order: an access token (KAGGLE_API_TOKEN, the value or a file; ~/.kaggle/access_token; a
    Kaggle Notebook's token), then a legacy key (kaggle.json, overridden field by field by
    KAGGLE_USERNAME / KAGGLE_KEY), then the OAuth login of `kaggle auth login`.
    """
    # kagglesdk, unlike kaggle, imports without side effects; its own lookup keeps us in step.
    from kagglesdk.kaggle_env import get_access_token_from_env

    cfg = config_dir()
    kaggle_json = cfg / "kaggle.json"
    file_values, warnings = _read_kaggle_json(kaggle_json)
    username = os.environ.get("KAGGLE_USERNAME") or file_values.get("username")
    key = os.environ.get("KAGGLE_KEY") or file_values.get("key")
    oauth = _read_oauth_tokens()
    secrets = [s for s in (key, *oauth) if s]
    if username and key:
        secrets.append(base64.b64encode(f"{username}:{key}".encode()).decode())  # Basic auth header

    token, where = get_access_token_from_env()
    if token:
        source = {"KAGGLE_API_TOKEN": "KAGGLE_API_TOKEN",
                  "access_token": "~/.kaggle/access_token",
                  "KAGGLE_API_V1_TOKEN": "the Kaggle Notebook's token"}.get(where, str(where))
        return Credentials(source, cfg, (token, *secrets), warnings)
    if username and key:
        from_env = bool(os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"))
        source = "KAGGLE_USERNAME/KAGGLE_KEY" if from_env else str(kaggle_json)
        return Credentials(source, cfg, tuple(secrets), warnings)
    if oauth:
        return Credentials("~/.kaggle/credentials.json (kaggle auth login)", cfg, tuple(secrets),
                           warnings)
    return None


def _read_kaggle_json(path: Path) -> tuple[dict, tuple[str, ...]]:
    """Its fields, and warnings: a damaged kaggle.json (checked by schemas.KAGGLE_JSON) is
    ignored with a warning naming the problem, never its content."""
    from .readers import read_json
    from .schemas import KAGGLE_JSON
    if not path.exists() and not path.is_symlink():
        return {}, ()
    warnings = ()
    try:
        if os.name != "nt" and path.stat().st_mode & 0o044:
            warnings = (f"{path} is readable by other users of this machine; "
                        f"run `chmod 600 {path}` to keep your Kaggle key private.",)
        values = read_json(path, KAGGLE_JSON) if path.stat().st_size else {}
    except (OSError, UserError) as e:
        return {}, (*warnings, f"ignoring {str(e).split('. ')[0]}; {KAGGLE_JSON.fix}")
    return values, warnings


def _read_oauth_tokens() -> tuple[str, ...]:
    path = Path(os.path.expanduser("~/.kaggle/credentials.json"))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    if not isinstance(data, dict) or not data.get("refresh_token"):
        return ()
    return tuple(str(data[k]) for k in ("refresh_token", "access_token") if data.get(k))


def mask(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every secret (of 4+ characters) replaced by ***."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


class _Masked(io.TextIOBase):
    """A text stream writing to `target` with secrets masked (for the kaggle package's prints)."""

    def __init__(self, target, secrets: tuple[str, ...]):
        self.target, self.secrets = target, secrets

    def write(self, s: str) -> int:
        self.target.write(mask(s, self.secrets))
        return len(s)

    def flush(self) -> None:
        self.target.flush()


