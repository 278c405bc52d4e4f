"""Keys of an experiment's stage graph change exactly where a setting or input changes."""

import copy

import pytest
from conftest import REPO, SHARED_EVAL

from pipeline.core import stage
from pipeline.core.errors import InputError
from pipeline.core.graph import deep_merge, experiment_graph


@pytest.fixture
def experiment(tiny_model_dir):
    return {
        "model": {"source": "local", "name": str(tiny_model_dir)},
        "data": {"templates": {"completion_tokens": 4}},
        "train": {"read_layers": [1], "mode": "cached", "max_steps": 2},
        "evaluate": {},
        "control": {},
        "report": {},
    }


def keys(config):
    return {name: node.key for name, node in experiment_graph("tiny", config, REPO).items()}


def changed(before, after):
    return {name for name in before if before[name] != after[name]}


def test_keys_are_deterministic_and_defaults_do_not_matter(experiment):
    explicit = copy.deepcopy(experiment)
    explicit["train"]["write_layer"] = 0  # the default, written out
    assert keys(experiment) == keys(explicit)


@pytest.mark.parametrize(
    "section, setting, value, expected",
    [
        ("evaluate", "max_new_tokens", 7, {"evaluate", "report"}),
        ("train", "lr", 5e-4, {"train", "evaluate", "control", "report"}),
        ("cache", "batch_size", 3, {"activation_cache", "train", "evaluate", "control", "report"}),
        (
            "filter",
            "max_tokens",
            100,
            {"filter", "activation_cache", "train", "evaluate", "control", "report"},
        ),
    ],
)
def test_a_setting_changes_its_stage_and_descendants_only(
    experiment, section, setting, value, expected
):
    before = keys(experiment)
    after = keys(deep_merge(experiment, {section: {setting: value}}))
    assert changed(before, after) == expected


def test_train_read_layer_flows_into_the_cache(experiment):
    graph = experiment_graph("tiny", deep_merge(experiment, {"train": {"read_layers": [2]}}), REPO)
    assert graph["activation_cache"].params["layers"] == [2]


def test_on_the_fly_training_has_no_cache(experiment):
    graph = experiment_graph(
        "tiny", deep_merge(experiment, {"train": {"mode": "on_the_fly"}}), REPO
    )
    assert "activation_cache" not in graph and "cache" not in graph["train"].inputs


def test_model_files_are_part_of_every_key(experiment, tmp_path, tiny_model_dir):
    import shutil

    copy_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy_dir)
    moved = deep_merge(experiment, {"model": {"name": str(copy_dir)}})
    before = keys(moved)
    config = (copy_dir / "config.json").read_text().replace('"rms_norm_eps"', '"rms_norm_eps" ')
    (copy_dir / "config.json").write_text(config)
    assert changed(before, keys(moved)) == set(before)


def test_unknown_setting_names_the_experiment_and_field(experiment):
    bad = deep_merge(experiment, {"train": {"lerning_rate": 1.0}})
    with pytest.raises(stage.ParamsError, match=r"experiments\.tiny\.train.*lerning_rate"):
        experiment_graph("tiny", bad, REPO)


@pytest.mark.skipif(not SHARED_EVAL.exists(), reason="../shared/latentqa_eval is absent")
def test_imported_data_is_keyed_by_file_content(experiment):
    with_import = deep_merge(experiment, {"data": {"latentqa_eval": {"path": str(SHARED_EVAL)}}})
    graph = experiment_graph("tiny", with_import, REPO)
    assert graph["data:latentqa_eval"].external["source"]
    assert "latentqa" in graph["evaluate"].inputs


def test_a_compared_experiment_feeds_the_report_and_is_built_first(experiment):
    from pipeline.core.graph import build_order

    long = deep_merge(experiment, {"train": {"max_steps": 6}, "report": {"compare_with": ["a"]}})
    experiments = {"long": long, "a": experiment}
    assert build_order(experiments) == ["a", "long"]
    peers = {"a": experiment_graph("a", experiment, REPO)}
    graph = experiment_graph("long", long, REPO, peers=peers)
    report = graph["report"]
    assert report.inputs["peer_a_train"] is peers["a"]["train"]
    assert report.inputs["peer_a_evaluate"] is peers["a"]["evaluate"]
    # Everything before training is shared; the peer's decoder changes this report only.
    assert graph["filter"].key == peers["a"]["filter"].key
    assert graph["train"].key != peers["a"]["train"].key
    other = experiment_graph("a", deep_merge(experiment, {"train": {"lr": 1e-5}}), REPO)
    again = experiment_graph("long", long, REPO, peers={"a": other})
    assert again["report"].key != report.key and again["train"].key == graph["train"].key
    with pytest.raises(ValueError, match="compare_with: 'a' is not another experiment"):
        experiment_graph("long", long, REPO)
    circle = {"x": {"report": {"compare_with": ["y"]}}, "y": {"report": {"compare_with": ["x"]}}}
    with pytest.raises(ValueError, match="compare_with circle"):
        build_order(circle)


def test_the_stage_registry_is_in_no_stage_code_digest():
    """Registering a stage must not change the key of every artifact already built."""
    from pipeline.core import stages

    registry = stages.PACKAGE_DIR / "core" / "stages.py"
    for name, spec in stages.STAGES.items():
        assert registry not in stages.source_files(spec.module), name


def test_analysis_nodes_read_as_the_decoder_reads_and_train_settings_spare_the_caches(experiment):
    from pipeline.core.graph import view_nodes

    with_analysis = deep_merge(experiment, {"analysis": {"lens": {"shots": 1}}})
    graph = experiment_graph("tiny", with_analysis, REPO)
    assert graph["layer_cache:dialogs"].params["items"] == "controlled"
    assert graph["layer_cache:statements"].params["items"] == "all"
    assert graph["layer_cache:statements"].inputs["data"] is graph["statements"]
    assert graph["probes"].inputs["train"] is graph["train"]
    # Opt-in: an analysis section alone changes no existing key and stays out of the view.
    plain = keys(experiment)
    assert {n: k for n, k in keys(with_analysis).items() if n in plain} == plain
    assert set(view_nodes(graph)) == set(plain)
    after = keys(deep_merge(with_analysis, {"train": {"lr": 5e-4}}))
    assert changed(keys(with_analysis), after) == {
        "train", "evaluate", "control", "probes", "explain", "report"
    }  # fmt: skip
    positions = keys(deep_merge(with_analysis, {"train": {"positions": "last:4"}}))
    assert {"layer_cache:dialogs", "layer_cache:statements"} <= changed(keys(with_analysis),
                                                                         positions)  # fmt: skip


def test_report_readers_put_the_analysis_in_the_report_and_the_view(experiment):
    from pipeline.core.graph import view_nodes

    config = deep_merge(experiment, {"analysis": {}, "report": {"readers": True}})
    graph = experiment_graph("tiny", config, REPO)
    assert {"probes", "lens", "explain"} <= set(graph["report"].inputs)
    assert set(view_nodes(graph)) == set(graph)
    with pytest.raises(ValueError, match="needs an analysis section"):
        experiment_graph("tiny", deep_merge(experiment, {"report": {"readers": True}}), REPO)


def test_unknown_analysis_sections_are_refused(experiment):
    with pytest.raises(ValueError, match="unknown section"):
        experiment_graph("tiny", deep_merge(experiment, {"analysis": {"probe": {}}}), REPO)


def test_public_tasks_feed_training_and_the_evaluation(experiment):
    config = deep_merge(experiment, {"data": {"public": {"eval_texts": 5}}})
    graph = experiment_graph("tiny", config, REPO)
    public = graph["data:public"]
    assert public.stage == "public_tasks"
    assert graph["filter"].inputs["data_public"] is public
    assert graph["evaluate"].inputs["public"] is public
    assert "public" not in experiment_graph("tiny", experiment, REPO)["evaluate"].inputs


def test_truth_statements_from_an_evaluated_relation_are_refused(experiment):
    ok = deep_merge(experiment, {"data": {"statements": {"relations": ["country_capital"]}}})
    assert experiment_graph("tiny", ok, REPO)["data:statements"].stage == "statements"
    for relations in (None, ["country_capital", "landmark_city"]):
        bad = deep_merge(experiment, {"data": {"statements": {"relations": relations}}})
        with pytest.raises(ValueError, match=r"landmark_city.*data.statements.relations"):
            experiment_graph("tiny", bad, REPO)


def test_a_mix_share_for_a_source_no_data_section_produces_is_refused(experiment):
    fits = {"data": {"relation_qa": {}}, "train": {"mix": {"template": 0.5, "relation_qa": 0.5}}}
    config = deep_merge(experiment, fits)
    assert experiment_graph("tiny", config, REPO)["train"].params["mix"]["relation_qa"] == 0.5
    bad = deep_merge(config, {"train": {"mix": {"context": 0.2}}})
    with pytest.raises(InputError) as info:
        experiment_graph("tiny", bad, REPO)
    assert str(info.value) == (
        "experiments.tiny.train.mix: context is not a source of this experiment's data "
        "sections, which produce relation_qa, template"
    )
    layers = {"read_layers": [1, 2], "write_layer": None}
    bad = deep_merge(config, {"train": {**layers, "family_layers": {"context": [2]}}})
    with pytest.raises(InputError, match=r"tiny.train.family_layers: context is not a source"):
        experiment_graph("tiny", bad, REPO)


def test_relations_the_relations_file_lacks_are_refused(experiment):
    bad = deep_merge(experiment, {"evaluate": {"eval_relations": ["landmark_city", "moon_rover"]}})
    with pytest.raises(InputError) as info:
        experiment_graph("tiny", bad, REPO)
    message = str(info.value)
    assert message.startswith("experiments.tiny.evaluate.eval_relations: moon_rover is not a ")
    assert f"relation of {REPO / 'data' / 'relations.yaml'} (it has " in message
    assert "country_capital" in message and "landmark_city is" not in message
    bad = deep_merge(experiment, {"data": {"relation_qa": {"relations": ["moon_rover"]}}})
    with pytest.raises(InputError, match=r"data\.relation_qa\.relations: moon_rover is not"):
        experiment_graph("tiny", bad, REPO)


def test_an_optional_latentqa_eval_folder_that_is_absent_is_left_out(experiment, tmp_path, capsys):
    missing = {"path": str(tmp_path / "nowhere"), "optional": True}
    graph = experiment_graph(
        "tiny", deep_merge(experiment, {"data": {"latentqa_eval": missing}}), REPO
    )
    assert "latentqa" not in graph["evaluate"].inputs and "data:latentqa_eval" not in graph
    assert "nowhere holds no LatentQA files, so it is left out" in capsys.readouterr().err
    # As a fresh clone has it: the folder with its README and checksums, no data.
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "README.md").write_text("where to get it\n")
    (shipped / "SHA256SUMS").write_text(f"{'0' * 64}  qa.json\n")
    config = deep_merge(
        experiment, {"data": {"latentqa_eval": {"path": str(shipped), "optional": True}}}
    )
    assert "data:latentqa_eval" not in experiment_graph("tiny", config, REPO)
    # Some of the files but not all is a broken copy, refused by name.
    (shipped / "stimulus.json").write_text("[]")
    with pytest.raises(FileNotFoundError, match="lacks qa.json"):
        experiment_graph("tiny", config, REPO)
    with pytest.raises(FileNotFoundError):
        required = {"path": str(tmp_path / "nowhere")}
        experiment_graph(
            "tiny", deep_merge(experiment, {"data": {"latentqa_eval": required}}), REPO
        )


def test_the_default_experiment_parses_from_a_fresh_clone(tmp_path):
    """The repository's own data files only: data/latentqa_eval/ has its README and checksums."""
    import shutil
    import subprocess

    import yaml

    listed = subprocess.run(
        ["git", "ls-files", "data"], cwd=REPO, capture_output=True, text=True, check=False
    )
    if listed.returncode != 0 or not listed.stdout.strip():
        pytest.skip("not a git checkout")
    for name in listed.stdout.split():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    assert (tmp_path / "data" / "latentqa_eval" / "SHA256SUMS").is_file()
    from pipeline.core.experiments import load_experiments

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    name = config["default_experiments"][0]
    graph = load_experiments(config, tmp_path, [name]).graphs_of([name])[name]
    assert "data:latentqa_eval" not in graph and "report" in graph


def test_published_adapters_bring_the_reading_curve_into_the_report(experiment):
    assert "reading_curve" not in keys(experiment)
    with_curve = deep_merge(experiment, {"train": {"adapter_every": 1}})
    graph = experiment_graph("tiny", with_curve, REPO)
    curve = graph["reading_curve"]
    assert graph["report"].inputs["curve"] is curve
    # It scores the evaluation's items with the decoder the evaluation read.
    assert curve.inputs["evaluate"] is graph["evaluate"]
    assert curve.inputs["train"] is graph["train"] and "relations" in curve.inputs
    before = keys(with_curve)
    after = keys(deep_merge(with_curve, {"reading_curve": {"max_items": 4}}))
    assert changed(before, after) == {"reading_curve", "report"}
    after = keys(deep_merge(with_curve, {"evaluate": {"max_new_tokens": 7}}))
    assert changed(before, after) == {"evaluate", "reading_curve", "report"}
    with pytest.raises(ValueError, match=r"tiny.reading_curve needs .*train.adapter_every"):
        experiment_graph("tiny", deep_merge(experiment, {"reading_curve": {}}), REPO)


def test_a_layer_the_model_lacks_is_refused_naming_the_setting(experiment):
    for override, named in (
        ({"train": {"mode": "on_the_fly", "read_layers": [4]}}, "train.read_layers = 4"),
        ({"train": {"write_layer": 4}}, "train.write_layer = 4"),
        ({"train": {"read_layers": [3]}, "cache": {"layers": [1, 7]}}, "cache.layers = 7"),
    ):
        with pytest.raises(InputError, match=rf"^experiments\.tiny\.{named}, .* has 4 blocks"):
            experiment_graph("tiny", deep_merge(experiment, override), REPO)
