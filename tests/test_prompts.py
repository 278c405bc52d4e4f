"""Curation's prompt templates: the shipped ones load and render; a bad one names its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.curation.params import FAMILY_FILES
from pipeline.curation.prompts import load_template, render
from pipeline.data.schema import DataError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_templates_load_and_render():
    for family, name in FAMILY_FILES.items():
        template = load_template(REPO / "data" / "curation" / name, family)
        assert template.version and len(template.themes) >= 10
        messages = render(template, 21, 3, 4)
        user = messages[1]["content"]
        assert template.themes[1] in user and "variant 2" in user and "$" not in user
        assert "3 exchanges" in user and "4 " in user


def test_bad_templates_name_the_field(tmp_path):
    good = (REPO / "data" / "curation" / "goals.yaml").read_text()
    path = tmp_path / "goals.yaml"
    path.write_text(good.replace("theme: $theme", "theme: $mood"))
    with pytest.raises(DataError, match="'user'.*placeholder"):
        load_template(path, "goal")
    path.write_text(good.replace("version: 1", "versoin: 1"))
    with pytest.raises(DataError, match="versoin"):
        load_template(path, "goal")
    path.write_text(good)
    with pytest.raises(DataError, match="family"):
        load_template(path, "persona")
