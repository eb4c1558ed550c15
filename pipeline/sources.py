"""Where the competition data come from: data/raw's zip, a Kaggle Notebook's input, a mirror
folder (the zip or its three CSVs), or finally the Kaggle API; and the digest that keys them."""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import data as data_mod
from .config import ZIP_NAME, Paths, command_hint
from .fileio import atomic_path

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Sources:
    """Where the competition data may come from, in the order they are tried after data/raw."""

    kaggle_input: Path = Path("/kaggle/input/digit-recognizer")  # a Kaggle Notebook's input
    mirror: Path | None = None  # a local directory holding digit-recognizer.zip (or the CSVs)
    use_api: bool = True  # finally, download through the Kaggle API


def locate_source(paths: Paths, sources: Sources) -> Path:
    """The competition data: data/raw's zip, a Kaggle Notebook input, the mirror, or the API."""
    if paths.raw_zip.exists() or paths.raw_zip.is_symlink():
        from .readers import require_file
        require_file(paths.raw_zip, f"Remove it and put the competition's {ZIP_NAME} there, "
                     f"or run `{command_hint('download')}` to fetch it.")
        log.info("download: using %s (already there)", paths.relative(paths.raw_zip))
        return paths.raw_zip
    if (sources.kaggle_input / "train.csv").is_file():
        log.info("download: using the Kaggle Notebook input %s", sources.kaggle_input)
        return sources.kaggle_input
    if (sources.kaggle_input / ZIP_NAME).is_file():  # read in place: the input is read-only
        log.info("download: using the Kaggle Notebook input %s", sources.kaggle_input / ZIP_NAME)
        return sources.kaggle_input / ZIP_NAME
    if sources.mirror is not None:
        zip_path = sources.mirror / ZIP_NAME
        if zip_path.is_file():
            data_mod.check_zip(zip_path)
            with atomic_path(paths.raw_zip) as tmp:
                shutil.copyfile(zip_path, tmp)
            log.info("download: copied %s from the mirror %s", ZIP_NAME, sources.mirror)
            return paths.raw_zip
        if (sources.mirror / "train.csv").is_file():
            log.info("download: using the CSVs in the mirror %s", sources.mirror)
            return sources.mirror
        raise data_mod.DataError(f"The mirror {sources.mirror} (KAGGLE_MIRROR) holds neither "
                                 f"{ZIP_NAME} nor train.csv/test.csv/sample_submission.csv.")
    if not sources.use_api:
        raise data_mod.DataError(_no_data_message(paths))
    from . import kaggle_io
    log.info("download: fetching %s through the Kaggle API", ZIP_NAME)
    return kaggle_io.download_competition(paths.raw, progress=True)


def _no_data_message(paths: Paths) -> str:
    return (f"No competition data found. Put {ZIP_NAME} in {paths.relative(paths.raw)}/, "
            f"or set KAGGLE_MIRROR to a directory that holds it (or the three CSVs), "
            f"or attach the competition to your Kaggle Notebook, "
            f"or provide Kaggle API credentials (see README, 'Credentials').")


def source_digest(source: Path, cache) -> str:
    """Digest of the competition data: the zip's, or of the three CSVs in a directory."""
    if source.is_file():
        return cache.file_digest(source)
    h = hashlib.sha256()
    for name in data_mod.MEMBERS:
        h.update(cache.file_digest(source / name).encode())
    return h.hexdigest()
