"""A LatentQA folder holds the files the import needs, unchanged since they were fetched.

The start check of ``import_latentqa`` (``StageSpec.start_check``): the workflow runs it when it
builds the graph, so that a missing or altered file stops ``snakemake -n``, not a job after model
preparation. It lives apart from the stage's module, which does not import it: the check is then
no part of the stage's code digest, and changing it reruns nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.core import store
from pipeline.core.errors import InputError

LATENTQA_FILES = ("qa.json",)
"""Files every LatentQA folder needs besides one ``<kind>.json`` per imported kind."""
SUMS = "SHA256SUMS"
"""A ``sha256sum`` listing the user keeps beside downloaded data; checked when present."""


def check_folder(where: str, params: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
    """Refuse a ``source`` folder (input) lacking a file the import of ``params["kinds"]`` reads,
    or holding one that differs from its checksum. ``where``: the config section, for errors."""
    folder = Path(inputs["source"])
    needed = [*LATENTQA_FILES, *(f"{kind}.json" for kind in params["kinds"])]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{where}.path: {folder} lacks {', '.join(missing)} (LatentQA files; "
            "data/latentqa/README.md says where to get the training data)"
        )
    check_sums(where, folder)


def check_sums(where: str, folder: Path) -> None:
    """Refuse data whose files differ from the checksums recorded when they were fetched."""
    listing = folder / SUMS
    if not listing.is_file():
        return
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")
        if len(digest) != 64 or not name:
            raise InputError(f"{listing}, line {number}: not '<sha256>  <file>': {line!r}")
        path = folder / name
        if not path.is_file():
            raise InputError(f"{where}.path: {listing}, line {number}: {name} is missing")
        if store.file_sha256(path) != digest.lower():
            raise InputError(
                f"{where}.path: {path} does not match its checksum in {listing} (line {number}); "
                "the data changed since it was recorded"
            )
