"""Snapshot of the code location: the assets, their order, partitions, checks, pool, job and
resources that `dubbing_assets.definitions.defs` declares. A change here is a change to what the
Dagster UI and the daemon see, so it should be deliberate."""

import tomllib
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.definitions.reconstruct import repository_def_from_target_def
from dagster._core.workspace.autodiscovery import loadable_targets_from_python_module

from dubbing_assets.definitions import defs
from dubbing_assets.jobs import STAGES
from resources.asr import AsrResource
from resources.jobstore import JobStore
from resources.notify import NtfyResource
from resources.storage import MediaStorage
from resources.translate import TranslatorResource
from resources.tts import TtsResource

ROOT = Path(__file__).resolve().parent.parent

PIPELINE = ["source_media", "extracted_audio", "transcript", "translation", "dubbed_speech",
            "dubbed_mix", "dubbed_video"]
KEYS = {dg.AssetKey(name) for name in PIPELINE}


def test_stage_list_matches_pipeline_order():
    assert STAGES == PIPELINE


def test_exactly_the_seven_stage_assets():
    assert set(defs.resolve_all_asset_keys()) == KEYS
    assert {spec.key for spec in defs.resolve_all_asset_specs()} == KEYS
    graph = defs.resolve_asset_graph()
    assert set(graph.materializable_asset_keys) == KEYS
    assert not graph.external_asset_keys - KEYS  # no stray source/external assets


def test_assets_form_a_chain_in_pipeline_order():
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    for i, name in enumerate(PIPELINE):
        deps = {dep.asset_key for dep in specs[dg.AssetKey(name)].deps}
        expected = {dg.AssetKey(PIPELINE[i - 1])} if i else set()
        assert deps == expected, name
    graph = defs.resolve_asset_graph()
    assert graph.toposorted_asset_keys == [dg.AssetKey(n) for n in PIPELINE]
    for i, name in enumerate(PIPELINE):
        parents = graph.get(dg.AssetKey(name)).parent_keys
        assert parents == ({dg.AssetKey(PIPELINE[i - 1])} if i else set()), name


def test_every_asset_is_partitioned_by_the_dub_jobs_dynamic_partitions():
    for spec in defs.resolve_all_asset_specs():
        pdef = spec.partitions_def
        assert isinstance(pdef, dg.DynamicPartitionsDefinition), spec.key
        assert pdef.name == "dub_jobs", spec.key
    graph = defs.resolve_asset_graph()
    assert [p.name for p in graph.all_partitions_defs] == ["dub_jobs"]
    assert not graph.unpartitioned_asset_keys


def test_all_assets_in_the_dubbing_group():
    assert {spec.group_name for spec in defs.resolve_all_asset_specs()} == {"dubbing"}


CHECKS = {  # the names are the contract (API, UI, CLI, notifications)
    "dubbed_speech": {"speech_speed", "speech_kept", "coverage", "no_overlap"},
    "dubbed_mix": {"loudness"},
    "dubbed_video": {"output_streams", "sync"},
}


def test_asset_checks():
    graph = defs.resolve_asset_graph()
    assert set(graph.asset_check_keys) == {dg.AssetCheckKey(dg.AssetKey(asset), name)
                                           for asset, names in CHECKS.items() for name in names} | {
        dg.AssetCheckKey(dg.AssetKey("dubbed_speech"), "round_trip")}
    # The quality checks are evaluated inside the producing asset's op (no extra step per check), and block:
    # a failure stops the run before anything downstream (the publish) happens.
    for name in PIPELINE:
        specs = list(defs.resolve_assets_def(name).check_specs)
        assert {s.name for s in specs} == CHECKS.get(name, set()), name
        assert all(s.blocking for s in specs), name
    # round_trip is its own step in the asr pool, and only warns
    round_trip = next(c for c in defs.asset_checks if c.check_key.name == "round_trip")
    assert not round_trip.check_specs_by_output_name[next(iter(round_trip.check_specs_by_output_name))].blocking
    assert round_trip.op.pool == "asr"


def test_transcript_is_in_the_asr_pool_and_dubbed_speech_in_the_tts_pool():
    pools = {name: defs.resolve_assets_def(name).op.pool for name in PIPELINE}
    assert pools == {name: {"transcript": "asr", "dubbed_speech": "tts"}.get(name) for name in PIPELINE}


def test_dub_job():
    assert "dub_job" in {job.name for job in defs.resolve_all_job_defs()}
    job = defs.resolve_job_def("dub_job")
    from dubbing_assets.executor import resumable_in_process_executor

    assert job.executor_def is resumable_in_process_executor  # dg.in_process_executor + resume
    assert job.executor_def.name == "in_process"
    assert sorted(node.name for node in job.graph.nodes) == sorted(PIPELINE + ["dubbed_speech_round_trip"])
    assert isinstance(job.partitions_def, dg.DynamicPartitionsDefinition)
    assert job.partitions_def.name == "dub_jobs"
    assert job.tags.get("dagster/max_retries") == "2"
    assert job.tags.get("dagster/retry_strategy") == "FROM_FAILURE"
    # Node dependencies of the job mirror the asset chain.
    for i, name in enumerate(PIPELINE[1:], start=1):
        upstream = {dep.node.name for dep in job.graph.dependency_structure.all_upstream_outputs_from_node(name)}
        assert upstream == {PIPELINE[i - 1]}, name


def test_resources():
    resources = dict(defs.resources)
    assert set(resources) == {"job_store", "storage", "asr", "translator", "tts", "ntfy"}
    assert isinstance(resources["job_store"], JobStore)
    assert isinstance(resources["storage"], MediaStorage)
    assert isinstance(resources["asr"], AsrResource)
    assert isinstance(resources["translator"], TranslatorResource)
    assert isinstance(resources["tts"], TtsResource)
    assert isinstance(resources["ntfy"], NtfyResource)
    # Which stage uses which resource (io_manager is Dagster's default, unused: assets return
    # MaterializeResult and keep their artifacts in `storage`).
    required = {name: set(defs.resolve_assets_def(name).required_resource_keys) - {"io_manager"}
                for name in PIPELINE}
    assert required == {
        "source_media": {"job_store", "storage"},
        "extracted_audio": {"storage"},
        "transcript": {"job_store", "storage", "asr"},
        "translation": {"job_store", "storage", "translator"},
        "dubbed_speech": {"job_store", "storage", "tts"},
        "dubbed_mix": {"job_store", "storage"},
        "dubbed_video": {"job_store", "storage"},
    }
    # the notifier is used by the notification sensors, not by the stages
    assert set().union(*required.values()) == set(resources) - {"ntfy"}
    used_by_sensors = set().union(*(s.required_resource_keys for s in defs.sensors))
    assert "ntfy" in used_by_sensors  # no unused resource


def test_definitions_validate_loadable():
    assert hasattr(dg.Definitions, "validate_loadable")
    dg.Definitions.validate_loadable(defs)


def test_workspace_yaml_module_loads_as_a_code_location():
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    entries = workspace["load_from"]
    assert len(entries) == 1
    target = entries[0]["python_module"]
    assert target["location_name"] == "dubbing"
    # What `dagster dev -w workspace.yaml` does: import the module, find its one Definitions object.
    loadable = loadable_targets_from_python_module(target["module_name"], working_directory=str(ROOT))
    assert [t.attribute for t in loadable] == ["defs"]
    loaded = loadable[0].target_definition
    assert isinstance(loaded, dg.Definitions)
    dg.Definitions.validate_loadable(loaded)
    repo = repository_def_from_target_def(loaded)
    assert repo.has_job("dub_job")
    assert {k for k in repo.asset_graph.get_all_asset_keys()} == KEYS


def test_pyproject_points_at_the_same_module():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    assert config["module_name"] == workspace["module_name"] == "dubbing_assets.definitions"
    assert config["code_location_name"] == workspace["location_name"]
