"""Every conversation with Kaggle, and the download of the competition zip: finding credentials,
connecting, retrying, and turning Kaggle's refusals into what to do. Uploads and the submission
list are `kaggle_submit.py`'s, on top of this. The real `kaggle` package makes every call;
checking files is left to `data.check_zip` and `submission.validate_submission`, option parsing
to `cli`.

`kaggle` authenticates when imported (and exits the process when it finds no credentials), so it
is imported inside functions, only after our own look for credentials has found some, with its
chatter captured; a SystemExit from it becomes a KaggleError. While it works, whatever it prints
goes to stderr with every known secret masked. Secrets never enter a message, ledger or log here:
credentials are named by where they were found, never by value.

Where the calls go. There is no endpoint setting here: the kaggle package talks to
https://api.kaggle.com as it always does, and requests honours HTTPS_PROXY and REQUESTS_CA_BUNDLE
exactly as for the kaggle CLI. The tests put a stand-in of Kaggle behind those two variables
(tests/kaggle_standin.py: a local proxy that terminates TLS with a test certificate authority),
so no code path exists only for tests, and a user behind a TLS-inspecting proxy is served by the
same mechanism. (KaggleApi's own switches could not do it: `--local` means http://localhost on
port 80, and KAGGLE_API_ENVIRONMENT=TEST still reaches production through KaggleApi.)

This module reads the environment, against the package's habit, because the kaggle package reads
its credentials and proxy from there: it looks where kaggle will look, to explain what is missing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from .config import COMPETITION, UserError
from .kaggle_auth import (  # noqa: F401 (find_credentials, mask: part of this module's face)
    NO_CREDENTIALS,
    TOKEN_PAGE,
    Credentials,
    _Masked,
    _read_kaggle_json,
    config_dir,
    find_credentials,
    mask,
)

log = logging.getLogger(__name__)
Sleep = Callable[[float], None]  # time.sleep, or a recorder in tests

RETRY_STATUSES = (429, 500, 502, 503, 504)  # worth another try: rate limits, server hiccups


class KaggleError(UserError):
    """Kaggle could not be reached, refused a call, or could not score a submission."""


@dataclass(frozen=True)
class Retry:
    """How hard to try one call before giving up (the kaggle package retries none of ours)."""

    attempts: int = 4  # tries per call, the first included
    backoff: float = 2.0  # seconds before the first retry; doubled after each
    max_wait: float = 60.0  # longest single wait, a server's Retry-After included


@contextlib.contextmanager
def _kaggle_prints(creds: Credentials, keep: bool = True) -> Iterator[None]:
    """Send the kaggle package's stdout to stderr, masked (or nowhere, when `keep` is False)."""
    target = _Masked(sys.stderr, creds.secrets) if keep else io.StringIO()
    with contextlib.redirect_stdout(target):
        yield


def _connect(creds: Credentials, retry: Retry, sleep: Sleep,
             offline_hint: str = ""):
    """An authenticated KaggleApi for `creds`; any failure becomes a KaggleError."""
    for warning in creds.warnings:
        log.warning(warning)
    with _kaggle_prints(creds, keep=False):  # import-time authentication prints help text
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi
        except SystemExit:
            raise KaggleError(f"{NO_CREDENTIALS} {offline_hint}".strip()) from None
        except ImportError as e:
            raise KaggleError(f"The kaggle package could not be imported ({e}); reinstall the "
                              f"project with `pip install -e .`.") from None
    api = KaggleApi()
    # kaggle fixes its config dir when first imported; point this instance at today's.
    api.config_dir = str(creds.config_dir)
    api.config = str(creds.config_dir / "kaggle.json")

    def authenticate():
        with _kaggle_prints(creds, keep=False):
            api.authenticate()

    try:
        _with_retry(authenticate, "checking your credentials", creds, retry, sleep,
                    offline_hint=offline_hint)
    except SystemExit:
        raise KaggleError(
            f"Kaggle did not accept the credentials from {creds.source}: the token has expired or "
            f"was regenerated. Make a new one at {TOKEN_PAGE} and store it in the same place."
        ) from None
    return api


def _credentials(offline_hint: str) -> Credentials:
    creds = find_credentials()
    if creds is None:
        _, warnings = _read_kaggle_json(config_dir() / "kaggle.json")
        damaged = "".join(f"{w} " for w in warnings if w.startswith("ignoring"))
        raise KaggleError(f"{damaged}{NO_CREDENTIALS} {offline_hint}".strip())
    return creds


# -- retries and error messages ------------------------------------------------------------------


def _with_retry(call: Callable, what: str, creds: Credentials, retry: Retry,
                sleep: Sleep, *, competition: str = COMPETITION,
                resend_safe: bool = True, offline_hint: str = ""):
    """Run `call`, retrying rate limits, server errors and dropped connections a bounded number
    of times (honouring Retry-After); then raise a KaggleError that says what to do.

    With `resend_safe=False` (a call that creates something) only failures that prove the request
    was not acted on are retried: HTTP 429, and connections that were never made.
    """
    for attempt in range(1, retry.attempts + 1):
        try:
            return call()
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else None
            retriable = status == 429 or (resend_safe and status in RETRY_STATUSES)
            if not retriable or attempt == retry.attempts:
                raise _explain(e, what, creds, attempt, competition, offline_hint) from None
            wait = _retry_after(e.response) if status == 429 else None
            reason = f"HTTP {status}"
        except (requests.ConnectionError, requests.Timeout) as e:
            retriable = resend_safe or _never_connected(e)
            if not retriable or attempt == retry.attempts:
                raise _explain(e, what, creds, attempt, competition, offline_hint) from None
            wait, reason = None, type(e).__name__
        if wait is None:
            wait = retry.backoff * 2 ** (attempt - 1)
        wait = min(wait, retry.max_wait)
        log.warning("Kaggle: %s while %s; retrying in %.1f s (attempt %d of %d).",
                    reason, what, wait, attempt + 1, retry.attempts)
        sleep(wait)
    raise AssertionError("unreachable")


def _retry_after(response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None  # absent, or an HTTP date: fall back to our own backoff


def _never_connected(e: Exception) -> bool:
    if isinstance(e, (requests.exceptions.ConnectTimeout, requests.exceptions.ProxyError)):
        return True
    reason = getattr(e.args[0], "reason", None) if e.args else None
    return type(reason).__name__ == "NewConnectionError"


def _short_reason(e: Exception) -> str:
    """The root cause of a connection failure in a few words: "[Errno 111] Connection refused"."""
    reason = getattr(e.args[0], "reason", None) if e.args else None
    reason = getattr(reason, "original_error", reason)  # urllib3's ProxyError wraps the cause
    text = str(reason if reason is not None else e)
    if "[Errno" in text:
        text = text[text.index("[Errno"):].rstrip("')\"")
    return text if len(text) <= 200 else text[:197] + "..."


def _proxy() -> str:
    """The HTTPS proxy requests will use, without any user:password in it."""
    url = urllib.request.getproxies().get("https", "")
    if not url:
        return ""
    parts = urlsplit(url if "://" in url else "http://" + url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _explain(e: Exception, what: str, creds: Credentials, attempts: int, competition: str,
             offline_hint: str) -> KaggleError:
    """The KaggleError for a failed call: what failed and the action that fixes it."""
    page = f"https://www.kaggle.com/c/{competition}"
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if isinstance(e, requests.HTTPError):
        status = e.response.status_code if e.response is not None else None
        detail = mask(str(e), creds.secrets)
        if status == 401:
            text = (f"Kaggle rejected the credentials from {creds.source} (HTTP 401) while {what}: "
                    f"the token has expired or was regenerated. Make a new one at {TOKEN_PAGE} "
                    f"and store it in the same place.")
        elif status in (400, 403) and what.startswith("submitting"):
            text = _refused_submission(status, detail, competition)
        elif status == 403 and "rule" in detail.lower():
            text = (f"Kaggle refused {what} (HTTP 403) because you have not accepted the "
                    f"competition's rules. Accept them at {page}/rules (the API cannot), then run "
                    f"this again.")
        elif status in (403, 404):
            text = (f"Kaggle refused {what} (HTTP {status}: {detail}). Check that the competition "
                    f"is called '{competition}' ({page}) and that you have joined it and accepted "
                    f"its rules ({page}/rules).")
        elif status == 429:
            text = (f"Kaggle kept rate-limiting {what} (HTTP 429){tries}; wait a few minutes and "
                    f"run this again.")
        elif status is not None and status >= 500:
            text = (f"Kaggle's server failed while {what} (HTTP {status}: {detail}){tries}; try "
                    f"again later.")
        else:
            text = f"Kaggle answered HTTP {status} while {what}: {detail}."
        return KaggleError(text)
    reason = mask(_short_reason(e), creds.secrets)
    hint = f" {offline_hint}" if offline_hint else ""
    if isinstance(e, requests.exceptions.ProxyError):
        return KaggleError(f"Could not reach Kaggle through the proxy {_proxy() or '(unknown)'} "
                           f"while {what}{tries} ({reason}). Check HTTPS_PROXY.{hint}")
    if isinstance(e, requests.exceptions.SSLError):
        return KaggleError(f"The TLS certificate check failed while {what} ({reason}). Behind a "
                           f"TLS-inspecting proxy, set REQUESTS_CA_BUNDLE to its CA certificate.")
    return KaggleError(f"Could not reach Kaggle while {what}{tries} ({reason}). Check your network "
                       f"connection{' and HTTPS_PROXY' if _proxy() else ''}.{hint}")


def _refused_submission(status: int, detail: str, competition: str) -> str:
    """Kaggle's 400 or 403 on a submission, with its usual causes, the likeliest first."""
    page = f"https://www.kaggle.com/c/{competition}"
    causes = {
        "rules": f"you have not joined the competition and accepted its rules (do it at "
                 f"{page}/rules; the API cannot)",
        "limit": "today's submission limit is reached (it resets at 00:00 UTC; "
                 "`digits submissions` lists today's)",
        "name": f"the competition name '{competition}' is wrong (see {page})",
    }
    text = detail.lower()
    hints = {"limit": ("limit", "exceed", "allowance", "quota", "maximum", "too many"),
             "name": ("not found", "does not exist", "unknown", "no such"),
             "rules": ("rule", "join", "accept")}  # the most specific clue first
    likely = [k for k, words in hints.items() if any(w in text for w in words)]
    order = likely + [k for k in causes if k not in likely]
    listed = "; ".join(f"{i}. {causes[k]}" for i, k in enumerate(order, 1))
    return (f"Kaggle refused the submission (HTTP {status}: {detail}). Nothing was submitted. "
            f"The usual causes: {listed}.")


# -- download ------------------------------------------------------------------------------------


def download_competition(dest_dir: Path, *, progress: bool = True, competition: str = COMPETITION,
                         retry: Retry = Retry(), sleep: Sleep = time.sleep) -> Path:
    """Download the competition zip into `dest_dir` and return its path, checked and complete.

    The download goes to a hidden `.<name>.partial/` directory inside `dest_dir`; only a zip that
    passes `data.check_zip` is renamed into place. A dropped connection is resumed (the kaggle
    package retries it from where it stopped, and a later run resumes a kept partial); a damaged
    zip is discarded, leaving `dest_dir` as it was.
    """
    from . import data

    dest_dir = Path(dest_dir)
    final = dest_dir / f"{competition}.zip"
    staging = dest_dir / f".{competition}.zip.partial"
    staged = staging / f"{competition}.zip"
    existed = dest_dir.exists()
    offline = (f"To work offline instead, put {final.name} in {dest_dir}/ or set KAGGLE_MIRROR "
               f"to a directory holding it.")
    creds = _credentials(offline)
    api = _connect(creds, retry, sleep, offline)

    def fetch():
        with _kaggle_prints(creds, keep=progress):
            api.competition_download_files(competition, path=str(staging), quiet=not progress)

    try:
        _with_retry(fetch, f"downloading {competition}", creds, retry, sleep,
                    competition=competition, offline_hint=offline)
    except KaggleError as e:
        if staged.is_file() and staged.stat().st_size:
            raise KaggleError(f"{e} The partial download is kept in {staging}; the next run "
                              f"resumes it.") from None
        _discard(staging, dest_dir, existed)
        raise
    except ValueError as e:  # kaggle's size check: the server sent more or less than it said
        _discard(staging, dest_dir, existed)
        raise KaggleError(f"The download of {competition} was incomplete ({e}); nothing was kept. "
                          f"Run this again.") from None
    if not staged.is_file():
        _discard(staging, dest_dir, existed)
        raise KaggleError(f"Kaggle's download of {competition} held no {staged.name}; nothing was "
                          f"kept.")
    try:
        data.check_zip(staged)
    except data.DataError as e:
        _discard(staging, dest_dir, existed)
        check = str(e).replace(getattr(data, "FIX_HINT", "\0"), "").strip()
        raise KaggleError(f"The zip downloaded from Kaggle failed its checks, so it was discarded "
                          f"and {dest_dir} is unchanged; run this again to download it afresh. "
                          f"The check said: {check}") from None
    os.replace(staged, final)
    shutil.rmtree(staging, ignore_errors=True)
    return final


def _discard(staging: Path, dest_dir: Path, existed: bool) -> None:
    """Remove the partial download, and `dest_dir` too if this call created it."""
    shutil.rmtree(staging, ignore_errors=True)
    if not existed:
        with contextlib.suppress(OSError):
            dest_dir.rmdir()  # only if empty
