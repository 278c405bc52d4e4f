"""The start check of a LatentQA folder: every file the import reads, unchanged since fetched
(through the graph: tests/test_latentqa_split.py)."""

import pytest

from pipeline.core import store
from pipeline.core.errors import InputError
from pipeline.data.latentqa_files import check_folder, check_sums

WHERE = "experiments.x.data.latentqa"


@pytest.fixture
def folder(tmp_path):
    for name in ("qa.json", "control.json"):
        (tmp_path / name).write_text("[]")
    return tmp_path


def test_a_folder_lacking_a_file_of_an_imported_kind_names_it(folder):
    check_folder(WHERE, {"kinds": ["control"]}, {"source": str(folder)})
    with pytest.raises(FileNotFoundError) as info:
        check_folder(WHERE, {"kinds": ["control", "system"]}, {"source": str(folder)})
    assert str(info.value).startswith(f"{WHERE}.path: {folder} lacks system.json (LatentQA")


def test_recorded_checksums_refuse_changed_missing_and_malformed_entries(folder):
    sums = folder / "SHA256SUMS"
    check_sums(WHERE, folder)  # no listing: nothing to check
    digest = store.file_sha256(folder / "qa.json")
    sums.write_text(f"{digest}  qa.json\n\n{digest} *control.json\n")
    check_sums(WHERE, folder)  # both match ("*": sha256sum's binary mode)
    (folder / "control.json").write_text("[] ")
    with pytest.raises(InputError, match=r"control.json does not match its checksum .*line 3"):
        check_sums(WHERE, folder)
    sums.write_text(f"{digest}  stimulus.json\n")
    with pytest.raises(InputError, match=r"line 1: stimulus.json is missing"):
        check_sums(WHERE, folder)
    sums.write_text("abc  qa.json\n")
    with pytest.raises(InputError, match=r"SHA256SUMS, line 1: not '<sha256>  <file>'"):
        check_sums(WHERE, folder)
