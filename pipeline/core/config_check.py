"""Check a workflow config against its JSON Schema with one line naming the file and the field.

Snakemake's own ``validate`` prints the whole sub-schema and neither the config file nor where in
it the offending value sits.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import validators
from jsonschema.exceptions import best_match

from pipeline.core.errors import InputError


def check_config(
    config: Mapping[str, Any], schema_file: str | os.PathLike, config_files: Iterable[str]
) -> None:
    """Raise :class:`InputError` for the most relevant schema violation in ``config``."""
    schema = yaml.safe_load(Path(schema_file).read_text())
    validator = validators.validator_for(schema)(schema)
    error = best_match(validator.iter_errors(dict(config)))
    if error is None:
        return
    where = ".".join(str(part) for part in error.absolute_path) or "<top level>"
    files = ", ".join(str(f) for f in config_files) or "the config"
    raise InputError(f"{files}: {where}: {error.message}")
