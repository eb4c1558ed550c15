"""kaggle_io and kaggle_submit end to end: the real `kaggle` package against a local stand-in of
Kaggle.

Every test runs with HOME, XDG_CONFIG_HOME and every KAGGLE_* / proxy variable pointed at its own
tmp dir or removed, so the real ~/.kaggle is never read or written and no request leaves the
machine: HTTPS_PROXY leads to the stand-in (tests/kaggle_standin.py), whose test CA is trusted
through REQUESTS_CA_BUNDLE. Waits are injected (`sleep=`) so retries cost no time.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from kaggle_standin import Running, StandIn, Submission, tiny_competition_zip

from pipeline import kaggle_io, kaggle_submit
from pipeline.cli import cli
from pipeline.kaggle_io import KaggleError, Retry
from pipeline.kaggle_submit import Poll
from pipeline.submission import SubmissionError, read_ledger

TOKEN = "KGAT_" + secrets.token_hex(16)  # a fresh secret per run: any trace of it is a leak
SCRUBBED = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
            "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "VERBOSE",
            "VERBOSE_OUTPUT", "DIGITS_ROOT")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """A home of our own, no credentials, no proxy: what a fresh machine offers."""
    for name in list(os.environ):
        if name.startswith("KAGGLE_") or name in SCRUBBED:
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    (tmp_path / "home").mkdir()
    return tmp_path


@pytest.fixture
def kaggle(monkeypatch, tmp_path):
    """The stand-in, running, trusted and reached through HTTPS_PROXY; stopped afterwards."""
    running = Running(StandIn(token=TOKEN), tmp_path)
    monkeypatch.setenv("HTTPS_PROXY", running.proxy_url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(running.ca_bundle))
    yield running.state
    running.stop()


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    return TOKEN


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def fast(sleeps):
    """Retry settings for tests: three tries, waits recorded instead of slept."""
    return {"retry": Retry(attempts=3, backoff=0.5), "sleep": sleeps.append}


@pytest.fixture
def raw(tmp_path) -> Path:
    """data/raw holding one unrelated file, so 'untouched' can be checked."""
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "NOTES.txt").write_text("mine\n")
    return raw


def contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def valid_submission(path: Path, shift: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("ImageId,Label\n" + "".join(f"{i},{(i + shift) % 10}\n"
                                                for i in range(1, 28001)))
    return path


def upload(tmp_path, state, fast, message="first try", **kw):
    path = kw.pop("path", None) or valid_submission(tmp_path / "submissions" / "submission.csv")
    ledger = tmp_path / "submissions" / "ledger.jsonl"
    return kaggle_submit.upload_submission(path, message, ledger=ledger, progress=False,
                                       poll=Poll(interval=1.0, timeout=60.0), **fast, **kw)


# -- download ------------------------------------------------------------------------------------


def test_download_puts_the_checked_zip_in_place(kaggle, token, raw, fast):
    # A download through the real client lands at data/raw/digit-recognizer.zip, byte for byte.
    path = kaggle_io.download_competition(raw, progress=False, **fast)
    assert path == raw / "digit-recognizer.zip"
    assert path.read_bytes() == kaggle.zip_bytes
    assert sorted(os.listdir(raw)) == ["NOTES.txt", "digit-recognizer.zip"]
    assert kaggle.calls("DownloadDataFiles")[0].headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("form", ["env token", "token file", "kaggle.json in KAGGLE_CONFIG_DIR",
                                  "kaggle.json in ~/.kaggle", "KAGGLE_USERNAME/KAGGLE_KEY"])
def test_every_credential_form_the_kaggle_package_accepts_works(form, kaggle, monkeypatch,
                                                                tmp_path, fast):
    # Each way of giving kaggle credentials authenticates the download, and is named as the source.
    home = tmp_path / "home"
    kaggle.basic = ("tester", "k" * 32)
    key_json = json.dumps({"username": "tester", "key": "k" * 32})
    if form == "env token":
        monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    elif form == "token file":
        (home / ".kaggle").mkdir()
        (home / ".kaggle" / "access_token").write_text(TOKEN + "\n")
    elif form == "kaggle.json in KAGGLE_CONFIG_DIR":
        (tmp_path / "cfg").mkdir()
        (tmp_path / "cfg" / "kaggle.json").write_text(key_json)
        (tmp_path / "cfg" / "kaggle.json").chmod(0o600)
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    elif form == "kaggle.json in ~/.kaggle":
        (home / ".kaggle").mkdir()
        (home / ".kaggle" / "kaggle.json").write_text(key_json)
        (home / ".kaggle" / "kaggle.json").chmod(0o600)
    else:
        monkeypatch.setenv("KAGGLE_USERNAME", "tester")
        monkeypatch.setenv("KAGGLE_KEY", "k" * 32)
    creds = kaggle_io.find_credentials()
    assert creds is not None and creds.warnings == ()
    assert TOKEN not in creds.source and "k" * 32 not in creds.source
    path = kaggle_io.download_competition(tmp_path / "raw", progress=False, **fast)
    assert path.read_bytes() == kaggle.zip_bytes


def test_kaggle_json_readable_by_others_is_warned_about(kaggle, tmp_path, fast, caplog):
    # A kaggle.json other users can read still works, with a warning that says how to fix it.
    kaggle.basic = ("tester", "k" * 32)
    cfg = tmp_path / "home" / ".kaggle"
    cfg.mkdir()
    (cfg / "kaggle.json").write_text(json.dumps({"username": "tester", "key": "k" * 32}))
    (cfg / "kaggle.json").chmod(0o644)
    kaggle_io.download_competition(tmp_path / "raw", progress=False, **fast)
    assert any("readable by other users" in r.getMessage() and "chmod 600" in r.getMessage()
               for r in caplog.records)


def test_download_resumes_after_a_dropped_connection(kaggle, token, raw, fast):
    # A connection cut mid-zip is retried with a Range request and the result is whole.
    kaggle.zip_bytes = tiny_competition_zip(n_train=900)  # > 1 MiB, the client's chunk size
    kaggle.drop_zip_once_after(1_200_000)
    path = kaggle_io.download_competition(raw, progress=False, **fast)  # the client waits ~2 s
    assert path.read_bytes() == kaggle.zip_bytes
    gets = kaggle.calls("zip")
    assert len(gets) == 2 and gets[1].headers["Range"] == "bytes=1048576-"
    assert sorted(os.listdir(raw)) == ["NOTES.txt", "digit-recognizer.zip"]


def test_a_later_run_resumes_a_kept_partial(kaggle, token, raw, fast):
    # A partial left by an interrupted run is continued from where it stopped, not restarted.
    import hashlib
    staging = raw / ".digit-recognizer.zip.partial"
    staging.mkdir()
    half = len(kaggle.zip_bytes) // 2
    (staging / "digit-recognizer.zip").write_bytes(kaggle.zip_bytes[:half])
    etag = '"' + hashlib.md5(kaggle.zip_bytes).hexdigest() + '"'
    (staging / "digit-recognizer.zip.kaggle-partial").write_text(
        json.dumps({"validator": etag, "size": len(kaggle.zip_bytes)}))
    path = kaggle_io.download_competition(raw, progress=False, **fast)
    assert path.read_bytes() == kaggle.zip_bytes
    assert kaggle.calls("zip")[-1].headers["Range"] == f"bytes={half}-"  # after the redirect's GET
    assert not staging.exists()


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_zip_is_discarded_and_data_raw_untouched(damage, kaggle, token, raw, fast):
    # A zip that fails check_zip never reaches data/raw, and the error says so.
    good = kaggle.zip_bytes
    if damage == "truncated":
        kaggle.zip_bytes = good[:len(good) // 2]
    else:
        i = good.index(b"label,pixel0") + 2000  # inside train.csv's stored bytes
        kaggle.zip_bytes = good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1:]
    before = contents(raw)
    with pytest.raises(KaggleError, match="failed its checks.*unchanged"):
        kaggle_io.download_competition(raw, progress=False, **fast)
    assert contents(raw) == before and sorted(os.listdir(raw)) == ["NOTES.txt"]


def test_rejected_token_says_make_a_new_one(kaggle, monkeypatch, raw, fast):
    # An expired or regenerated token: the message names where it came from and what to do.
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_" + "0" * 32)
    with pytest.raises(KaggleError, match="KAGGLE_API_TOKEN.*expired or was regenerated.*"
                                          "kaggle.com/settings/api"):
        kaggle_io.download_competition(raw, progress=False, **fast)
    assert sorted(os.listdir(raw)) == ["NOTES.txt"]


def test_http_401_on_a_call_says_make_a_new_token(kaggle, monkeypatch, raw, fast):
    # A key the server answers 401 to is reported as expired, with the place it was read from.
    kaggle.basic = ("tester", "the-right-key")
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "an-old-key")
    with pytest.raises(KaggleError, match=r"KAGGLE_USERNAME/KAGGLE_KEY \(HTTP 401\).*expired"):
        kaggle_io.download_competition(raw, progress=False, **fast)
    assert len(kaggle.calls("DownloadDataFiles")) == 1  # a 401 is not retried


def test_403_for_rules_points_at_the_rules_page(kaggle, token, raw, fast):
    # Unaccepted rules are explained with the page to accept them on (the API cannot).
    kaggle.fail("DownloadDataFiles", 403, "You must accept this competition's rules before "
                                          "you'll be able to download files.")
    with pytest.raises(KaggleError, match=r"https://www.kaggle.com/c/digit-recognizer/rules "
                                          r"\(the API cannot\)"):
        kaggle_io.download_competition(raw, progress=False, **fast)
    assert sorted(os.listdir(raw)) == ["NOTES.txt"]


def test_unknown_competition_asks_to_check_the_name(kaggle, token, raw, fast):
    # A misspelt competition gets HTTP 404 from Kaggle and a message naming what was asked for.
    with pytest.raises(KaggleError, match="HTTP 404.*'digit-recogniser'"):
        kaggle_io.download_competition(raw, progress=False, competition="digit-recogniser", **fast)


def test_429_is_retried_after_the_servers_retry_after(kaggle, token, raw, fast, sleeps):
    # Rate limiting waits as long as Retry-After says, then the download succeeds.
    kaggle.fail("DownloadDataFiles", 429, "Too many requests", headers={"Retry-After": "7"})
    path = kaggle_io.download_competition(raw, progress=False, **fast)
    assert path.read_bytes() == kaggle.zip_bytes
    assert sleeps == [7.0]


def test_500_is_retried_a_bounded_number_of_times_then_reported(kaggle, token, raw, fast, sleeps):
    # A failing server is tried three times with growing waits, then named in one message.
    kaggle.fail("DownloadDataFiles", 500, "Internal error", times=5)
    with pytest.raises(KaggleError, match="HTTP 500.*after 3 attempts; try again later"):
        kaggle_io.download_competition(raw, progress=False, **fast)
    assert len(kaggle.calls("DownloadDataFiles")) == 3 and sleeps == [0.5, 1.0]
    assert sorted(os.listdir(raw)) == ["NOTES.txt"]


def test_an_unreachable_proxy_is_named_with_the_offline_ways(token, monkeypatch, raw, fast):
    # A dead HTTPS_PROXY is retried, then reported with the proxy and the offline alternatives.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    monkeypatch.setenv("HTTPS_PROXY", f"http://user:pw@127.0.0.1:{port}")
    with pytest.raises(KaggleError) as err:
        kaggle_io.download_competition(raw, progress=False, **fast)
    message = str(err.value)
    assert f"proxy http://127.0.0.1:{port}" in message and "after 3 attempts" in message
    assert "KAGGLE_MIRROR" in message and "pw" not in message


def test_no_credentials_is_one_helpful_message_before_any_request(kaggle, raw, fast):
    # Without credentials nothing is sent and the message lists every way forward.
    with pytest.raises(KaggleError) as err:
        kaggle_io.download_competition(raw, progress=False, **fast)
    message = str(err.value)
    for way in ("KAGGLE_API_TOKEN", "~/.kaggle/access_token", "kaggle.json", "KAGGLE_CONFIG_DIR",
                "KAGGLE_USERNAME", "data/raw/", "KAGGLE_MIRROR"):
        assert way in message
    assert kaggle.requests == []


def test_cli_without_credentials_exits_1_without_traceback(tmp_path):
    # `digits upload` on a fresh machine: exit code 1, one line saying what to do, no traceback.
    valid_submission(tmp_path / "submissions" / "submission.csv")
    result = CliRunner().invoke(cli, ["--root", str(tmp_path), "upload", "-m", "first"])
    assert result.exit_code == 1
    assert "No Kaggle API credentials found" in result.output
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit


# -- upload --------------------------------------------------------------------------------------


def test_upload_polls_until_scored_and_records_it(kaggle, token, tmp_path, fast, sleeps):
    # Upload sends the file, polls PENDING -> COMPLETE, and the ledger keeps ref, status, score.
    entry = upload(tmp_path, kaggle, fast)
    assert entry["status"] == "COMPLETE" and entry["public_score"] == "0.98765"
    assert sleeps == [1.0, 1.0]  # two PENDING answers, each followed by one poll interval
    sent = (tmp_path / "submissions" / "submission.csv").read_bytes()
    assert list(kaggle.uploads.values()) == [sent]
    assert kaggle.submissions[0].description == "first try"
    [recorded] = read_ledger(tmp_path / "submissions" / "ledger.jsonl")
    assert recorded["kind"] == "upload" and recorded["ref"] == 100
    assert recorded["file"] == "submissions/submission.csv" and recorded["status"] == "COMPLETE"


def test_an_invalid_file_is_refused_before_any_request(kaggle, token, tmp_path, fast):
    # A file Kaggle would reject is never sent: validation fails first, the wire stays silent.
    bad = tmp_path / "submissions" / "submission.csv"
    bad.parent.mkdir()
    bad.write_text("ImageId,Label\n1,3\n")
    with pytest.raises(SubmissionError, match="expected exactly 28000"):
        upload(tmp_path, kaggle, fast, path=bad)
    assert kaggle.requests == []


def test_a_byte_identical_file_is_refused_unless_forced(kaggle, token, tmp_path, fast):
    # The same bytes twice are refused (no request) until --force says to send them anyway.
    upload(tmp_path, kaggle, fast)
    n_requests = len(kaggle.requests)
    with pytest.raises(KaggleError, match="byte-identical.*submission 100.*--force"):
        upload(tmp_path, kaggle, fast, message="again")
    assert len(kaggle.requests) == n_requests
    entry = upload(tmp_path, kaggle, fast, message="again", force=True)
    assert entry["ref"] == 101


def test_error_status_is_a_failure_and_is_recorded(kaggle, token, tmp_path, fast):
    # A submission Kaggle scores ERROR raises with Kaggle's reason; the ledger records the ERROR.
    kaggle.final_status = "ERROR"
    with pytest.raises(KaggleError, match="could not score submission 100: Submission file has"):
        upload(tmp_path, kaggle, fast)
    [recorded] = read_ledger(tmp_path / "submissions" / "ledger.jsonl")
    assert recorded["status"] == "ERROR" and recorded["public_score"] is None


def test_400_on_submit_explains_joining_and_the_daily_limit(kaggle, token, tmp_path, fast):
    # Kaggle's 400 on CreateSubmission is a failure naming the usual causes, and is not retried.
    kaggle.fail("CreateSubmission", 400, "Submission limit reached")
    with pytest.raises(KaggleError, match="HTTP 400.*submission limit.*not joined.*name"):
        upload(tmp_path, kaggle, fast)
    assert len(kaggle.calls("CreateSubmission")) == 1
    assert read_ledger(tmp_path / "submissions" / "ledger.jsonl") == []


@pytest.mark.parametrize("status, detail, first", [
    (403, "You must accept this competition's rules before submitting", "accepted its rules"),
    (400, "Your team has used its daily Submission allowance (5) today", "submission limit"),
    (403, "Competition does not exist", "name 'digit-recognizer' is wrong"),
    (403, "Permission denied", "accepted its rules"),  # no clue: the commonest cause first
])
def test_400_or_403_on_submit_names_the_usual_causes_likeliest_first(kaggle, token, tmp_path,
                                                                     fast, status, detail, first):
    # A refused submission lists rules, daily limit and competition name, ordered by what
    # Kaggle's own message hints at, with the page to fix each and Kaggle's words kept.
    kaggle.fail("CreateSubmission", status, detail)
    with pytest.raises(KaggleError) as err:
        upload(tmp_path, kaggle, fast)
    message = str(err.value)
    assert f"HTTP {status}: {detail}" in message and "Nothing was submitted" in message
    causes = message.split("The usual causes: ")[1]
    assert causes.startswith("1. ") and first in causes.split("; 2.")[0], causes
    for words in ("accepted its rules", "submission limit", "name 'digit-recognizer'",
                  "kaggle.com/c/digit-recognizer/rules", "00:00 UTC"):
        assert words in causes


def test_upload_says_how_many_submissions_are_left_and_records_ref_and_date(
        kaggle, token, tmp_path, fast, caplog):
    # Before sending, Kaggle's count of today's submissions is asked for and said; the ledger
    # keeps the ref, Kaggle's date of the submission and what is left after it.
    kaggle.submissions.append(Submission(99, "2030-01-01T00:00:00.000Z", "earlier", "a.csv", "",
                                         0, "COMPLETE", "0.5", "", "COMPLETE"))
    with caplog.at_level("INFO"):
        entry = upload(tmp_path, kaggle, fast)
    assert any("4 submissions left today (1 made today)" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    asked = kaggle.calls("GetSubmissionLimits")
    assert len(asked) == 1
    assert json.loads(asked[0].body) == {"competitionName": "digit-recognizer"}
    created = kaggle.calls("CreateSubmission")[0]
    assert kaggle.requests.index(asked[0]) < kaggle.requests.index(created)
    [recorded] = read_ledger(tmp_path / "submissions" / "ledger.jsonl")
    kaggle_date = kaggle.submissions[1].date  # e.g. 2026-12-01T20:30:00.123456Z
    assert recorded["ref"] == entry["ref"] == 101 and recorded["left_today"] == 3
    assert recorded["date"] == kaggle_date[:19] + "Z"


def test_upload_at_the_daily_limit_is_refused_before_anything_is_sent(kaggle, token, tmp_path,
                                                                      fast):
    # With today's submissions used up, nothing is uploaded and the message says when to retry.
    kaggle.daily_limit = 2
    for ref in (98, 99):
        kaggle.submissions.append(Submission(ref, "2030-01-01T00:00:00.000Z", "x", "a.csv", "", 0,
                                             "COMPLETE", "0.5", "", "COMPLETE"))
    with pytest.raises(KaggleError, match="no more submissions to digit-recognizer today: 2 made "
                                          "today.*00:00 UTC.*Nothing was sent"):
        upload(tmp_path, kaggle, fast)
    assert kaggle.calls("StartSubmissionUpload") == [] and kaggle.calls("CreateSubmission") == []
    assert kaggle.uploads == {}
    assert read_ledger(tmp_path / "submissions" / "ledger.jsonl") == []


def test_a_server_without_the_limits_call_does_not_block_the_upload(kaggle, token, tmp_path, fast,
                                                                    caplog):
    # A server that does not know GetSubmissionLimits (HTTP 404) costs a warning, not the upload.
    kaggle.daily_limit = None
    entry = upload(tmp_path, kaggle, fast)
    assert entry["status"] == "COMPLETE" and entry["left_today"] is None
    assert any("could not learn how many submissions are left today" in r.getMessage()
               and "HTTP 404" in r.getMessage() for r in caplog.records)


def test_a_kaggle_package_without_the_limits_call_still_uploads(kaggle, token, tmp_path, fast,
                                                                monkeypatch, caplog):
    # An older kaggle package (no competition_get_submission_limits) uploads as before, says so.
    from kaggle.api.kaggle_api_extended import KaggleApi
    monkeypatch.delattr(KaggleApi, "competition_get_submission_limits")
    with caplog.at_level("INFO"):
        entry = upload(tmp_path, kaggle, fast)
    assert entry["status"] == "COMPLETE" and kaggle.calls("GetSubmissionLimits") == []
    assert any("cannot tell how many submissions are left" in r.getMessage()
               for r in caplog.records)


def test_before_joining_the_limits_warn_and_the_refusal_names_the_rules(kaggle, token, tmp_path,
                                                                       fast, caplog):
    # All-zero limits (what Kaggle says before you join) warn; Kaggle's 403 then names the rules.
    kaggle.joined = False
    kaggle.fail("CreateSubmission", 403, "You must accept this competition's rules first.")
    with pytest.raises(KaggleError, match=r"HTTP 403.*1\. you have not joined the competition"):
        upload(tmp_path, kaggle, fast)
    assert any("before you join" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind, content", [
    ("a PNG image", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
    ("a zip archive", "zip"),
    ("a gzip-compressed file", "gzip"),
    ("UTF-16 text", "ImageId,Label\n1,0\n".encode("utf-16")),
    ("binary data", bytes(range(256)) * 8),
])
def test_upload_of_a_file_that_is_not_a_csv_says_what_it_is(kaggle, token, tmp_path, kind,
                                                            content):
    # `digits upload` on an image, an archive or binary data names what the file is and what
    # Kaggle expects, in one line with exit code 1, and sends nothing.
    import gzip
    import io
    import zipfile
    path = valid_submission(tmp_path / "submissions" / "submission.csv")
    if content == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.write(path, "submission.csv")
        content = buf.getvalue()
    elif content == "gzip":
        content = gzip.compress(path.read_bytes())
    odd = tmp_path / "odd.csv"
    odd.write_bytes(content)
    result = CliRunner().invoke(cli, ["--root", str(tmp_path), "-q", "upload", "-m", "x",
                                      str(odd)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{odd} is {kind}" in result.output
    assert "UTF-8 CSV file with the header ImageId,Label" in result.output
    assert "28000 rows" in result.output and len(result.output.strip().splitlines()) == 1
    assert kaggle.requests == []


def test_a_failed_upload_to_storage_is_could_not_submit(kaggle, token, tmp_path, fast):
    # When the file cannot be put in Kaggle's storage, nothing is created and it is a failure.
    kaggle.fail("upload", 403, "Signature expired")
    with pytest.raises(KaggleError, match="Could not submit"):
        upload(tmp_path, kaggle, fast)
    assert kaggle.calls("CreateSubmission") == []
    assert read_ledger(tmp_path / "submissions" / "ledger.jsonl") == []


def test_waiting_times_out_but_the_submission_is_recorded(kaggle, token, tmp_path, fast):
    # A score that never comes ends the wait with a message; the ledger keeps it as PENDING.
    kaggle.polls_to_score = 1000
    path = valid_submission(tmp_path / "submissions" / "submission.csv")
    with pytest.raises(KaggleError, match="had not scored submission 100.*digits submissions"):
        kaggle_submit.upload_submission(path, "slow",
                                        ledger=tmp_path / "submissions" / "ledger.jsonl",
                                        poll=Poll(interval=1.0, timeout=0.5), progress=False,
                                        **fast)
    [recorded] = read_ledger(tmp_path / "submissions" / "ledger.jsonl")
    assert recorded["status"] == "PENDING" and recorded["ref"] == 100


def test_cli_upload_prints_the_score(kaggle, token, tmp_path):
    # `digits upload -m` through click: one result line with the public score; exit code 0.
    valid_submission(tmp_path / "submissions" / "submission.csv")
    kaggle.polls_to_score = 0
    result = CliRunner().invoke(cli, ["--root", str(tmp_path), "-q", "upload", "-m", "cli"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "public score: 0.98765 (submission 100, submissions/submission.csv)" in result.output


def test_cli_upload_of_an_error_scored_file_exits_1(kaggle, token, tmp_path):
    # `digits upload` reports Kaggle's ERROR as a failure: exit code 1 and Kaggle's reason.
    valid_submission(tmp_path / "submissions" / "submission.csv")
    kaggle.polls_to_score, kaggle.final_status = 0, "ERROR"
    result = CliRunner().invoke(cli, ["--root", str(tmp_path), "-q", "upload", "-m", "cli"])
    assert result.exit_code == 1
    assert "digits: error: Kaggle could not score submission 100" in result.output


# -- submissions ---------------------------------------------------------------------------------


def test_submissions_join_the_ledger_with_kaggle_newest_first(kaggle, token, tmp_path, fast):
    # The list shows Kaggle's status for our uploads and others', plus ledger-only entries.
    upload(tmp_path, kaggle, fast, message="one")
    upload(tmp_path, kaggle, fast, message="two",
           path=valid_submission(tmp_path / "submissions" / "b.csv", shift=1))
    kaggle.submissions.append(Submission(102, "2030-01-01T00:00:00.000Z", "from the website",
                                         "web.csv", "", 0, "COMPLETE", "0.5", "", "COMPLETE"))
    ledger = tmp_path / "submissions" / "ledger.jsonl"
    with ledger.open("a") as f:
        f.write(json.dumps({"kind": "upload", "time": "2000-01-01T00:00:00Z", "ref": 7,
                            "status": "COMPLETE", "sha256": "ab" * 32, "message": "gone"}) + "\n")
    rows = kaggle_submit.list_submissions(ledger, **fast)
    assert [r["ref"] for r in rows] == [102, 101, 100, 7]
    assert rows[1]["message"] == "two" and rows[1]["sha256"] and rows[1]["file"]
    assert rows[0]["sha256"] is None and rows[3]["status"] == "COMPLETE (not on Kaggle)"
    table = kaggle_submit.submissions_table(rows)
    assert table.splitlines()[0].split() == ["time", "ref", "status", "score", "sha256", "message"]
    offline = kaggle_submit.list_submissions(ledger, remote=False)
    assert [r["ref"] for r in offline] == [101, 100, 7]
    shown = CliRunner().invoke(cli, ["--root", str(tmp_path), "submissions"],
                               catch_exceptions=False).output.splitlines()
    assert shown[1].split()[1:4] == ["102", "COMPLETE", "0.5"] and len(shown) == 5


# -- secrets -------------------------------------------------------------------------------------


def test_the_secret_never_appears_in_output_files_or_errors(kaggle, tmp_path, fast, capfd):
    # Download, upload, listing and an error echoing the token leave no trace of it anywhere.
    token_file = tmp_path / "home" / ".kaggle" / "access_token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN)
    kaggle_io.download_competition(tmp_path / "data" / "raw", progress=True, **fast)
    entry = upload(tmp_path, kaggle, fast)
    rows = kaggle_submit.list_submissions(tmp_path / "submissions" / "ledger.jsonl", **fast)
    kaggle.fail("ListSubmissions", 500, f"token {TOKEN} is over quota", times=3)
    with pytest.raises(KaggleError) as err:
        kaggle_submit.list_submissions(tmp_path / "submissions" / "ledger.jsonl", **fast)
    creds = kaggle_io.find_credentials()
    out, errors = capfd.readouterr()
    texts = [out, errors, str(err.value), json.dumps(entry), json.dumps(rows), repr(creds)]
    assert "***" in str(err.value)
    assert not [t for t in texts if TOKEN in t]
    leaks = [p for p in tmp_path.rglob("*")
             if p.is_file() and p != token_file and TOKEN.encode() in p.read_bytes()]
    assert leaks == []


def test_mask_replaces_every_secret():
    # mask() hides each secret, longest first, and leaves short strings alone.
    assert kaggle_io.mask("a KGAT_x1 b KGAT_x1y", ("KGAT_x1", "KGAT_x1y")) == "a *** b ***"
    assert kaggle_io.mask("abc", ("ab",)) == "abc"

