"""The config object checks every value once and names a bad one."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re

import pytest

from imgtools.config import OutputFormat, PresizeConfig, ResizeMode, Size, parse_color, parse_size
from imgtools.errors import (
    ConfigError,
    DecodeError,
    DestinationError,
    ImgtoolsError,
    SourceError,
    StorageError,
    UnsupportedError,
)


@pytest.mark.parametrize("value,expected", [(64, Size(64, 64)), ("64", Size(64, 64)), ("320x240", Size(320, 240)),
                                            (" 32 X 16 ", Size(32, 16)), ((7, 9), Size(7, 9))])
def test_parse_size_accepts_n_and_wxh(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["0", "abc", "64x", "-5", "70000", True, 1.5, "3x4x5"])
def test_parse_size_rejects_and_names_the_value(value):
    with pytest.raises(ConfigError, match="size"):
        parse_size(value)


@pytest.mark.parametrize("value,expected", [("white", (255, 255, 255)), ("#0a0B0c", (10, 11, 12)),
                                            ("1,2,3", (1, 2, 3)), ((4, 5, 6), (4, 5, 6))])
def test_parse_color_accepts_names_hex_and_triples(value, expected):
    assert parse_color(value) == expected


@pytest.mark.parametrize("value", ["purple-ish", "#12345", "1,2", "1,2,300"])
def test_parse_color_rejects_and_names_the_value(value):
    with pytest.raises(ConfigError, match="colour"):
        parse_color(value)


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "stretch"}, "resize mode 'stretch'"),
    ({"format": "gif"}, "output format 'gif'"),
    ({"labels": "file"}, "label source 'file'"),
    ({"chunk": 0}, "chunk 0"),
    ({"sizes": []}, "sizes is empty"),
    ({"sizes": [64, "64x64"]}, "repeat"),
    ({"mode": "shortest"}, "varying size"),
    ({"mode": "longest", "format": "jpeg", "sizes": ["20x30"]}, "one number"),
    ({"max_pixels": 0}, "max_pixels"),
    ({"quality": 101}, "quality"),
])
def test_build_rejects_bad_values_naming_them(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PresizeConfig.build(**kwargs)


def test_config_is_frozen_hashable_and_round_trips_through_dict_and_pickle():
    cfg = PresizeConfig.build(sizes=[64, "224x160"], mode="pad", background="#102030", formats=["jpeg", "png"])
    assert cfg.size_keys == ["64x64", "224x160"]
    assert cfg.formats == ("JPEG", "PNG")
    assert PresizeConfig.from_dict(cfg.to_dict()) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert hash(cfg) == hash(PresizeConfig.from_dict(cfg.to_dict()))
    with pytest.raises(AttributeError):
        cfg.chunk = 3  # type: ignore[misc]


def test_size_keys_follow_the_mode():
    assert Size(160, 160).key(ResizeMode.SHORTEST) == "short160"
    assert Size(512, 512).key(ResizeMode.LONGEST) == "long512"
    assert Size(32, 16).key(ResizeMode.SQUASH) == "32x16"


@pytest.mark.parametrize("tblib", [False, True])  # True: as Dask sends a task's error back to the client
@pytest.mark.parametrize("kind", [ConfigError, SourceError, DestinationError, DecodeError, UnsupportedError,
                                  StorageError])
def test_errors_are_builtin_subclasses_and_pickle(kind, tblib):
    err = kind("size '0' is bad")
    if tblib:
        import tblib.pickling_support

        tblib.pickling_support.install(err)
    assert isinstance(err, ValueError) and isinstance(err, ImgtoolsError)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is kind and str(again) == str(err) and again.args == err.args
    assert OutputFormat.ZARR.is_array and not OutputFormat.PNG.is_array


#: Configs that, between them, set every field of PresizeConfig to something other than its default.
NON_DEFAULT_CONFIGS = {
    "pad-webp": PresizeConfig.build(sizes=[64, "224x160"], mode="pad", format="webp", labels="none", chunk=7,
                                    resample="lanczos", background="#102030", pad_color=(1, 2, 3), quality=55,
                                    formats=["jpeg", "png"], draft_factor=4, image_timeout=30, channels=4),
    "shortest-jpeg": PresizeConfig.build(sizes=[160], mode="shortest", format="jpeg", only_if_bigger=True,
                                         max_pixels=1_000_000, max_bytes=5_000_000, draft_factor=1.5,
                                         min_side=32, max_aspect=2.5),
    "zarr-zstd-masks": PresizeConfig.build(sizes=["32x16"], mode="squash", compression="zstd", masks=True,
                                           draft_factor=8, chunk=3),
    "webdataset-png": PresizeConfig.build(sizes=[32], format="webdataset", shard_image="png", channels=1),
}


@pytest.mark.parametrize("through", ["to_dict", "to_json"])
@pytest.mark.parametrize("name", sorted(NON_DEFAULT_CONFIGS))
def test_from_dict_gives_back_every_field_of_a_non_default_config(name, through):
    cfg = NON_DEFAULT_CONFIGS[name]
    data = cfg.to_dict() if through == "to_dict" else json.loads(cfg.to_json())
    again = PresizeConfig.from_dict(data)
    for field in dataclasses.fields(PresizeConfig):
        assert getattr(again, field.name) == getattr(cfg, field.name), field.name
    assert again == cfg and again.to_json() == cfg.to_json()


def test_the_round_trip_configs_leave_no_field_at_its_default():
    default = PresizeConfig()
    untouched = [f.name for f in dataclasses.fields(PresizeConfig)
                 if all(getattr(cfg, f.name) == getattr(default, f.name) for cfg in NON_DEFAULT_CONFIGS.values())]
    assert untouched == []


def test_from_dict_of_an_output_written_without_draft_factor_takes_the_default():
    data = PresizeConfig.build(sizes=[48], mode="squash").to_dict()
    del data["draft_factor"]  # outputs written before the key was kept
    assert PresizeConfig.from_dict(data) == PresizeConfig.build(sizes=[48], mode="squash", draft_factor=2.0)
    assert PresizeConfig.from_dict(data).draft_factor == 2.0


@pytest.mark.parametrize("value,expected", [(1, 1.0), (4, 4.0), (2.5, 2.5), ("3", 3.0), (8.0, 8.0)])
def test_build_accepts_a_draft_factor_between_1_and_8(value, expected):
    assert PresizeConfig.build(draft_factor=value).draft_factor == expected


@pytest.mark.parametrize("value,match", [
    (0.5, "draft_factor 0.5 must be between 1 and 8"),
    (9, "draft_factor 9.0 must be between 1 and 8"),
    (float("nan"), "draft_factor nan must be between 1 and 8"),
    ("lots", "draft_factor 'lots' is not a number"),
    (None, "draft_factor None is not a number"),
    (True, "draft_factor True is not a number"),
])
def test_build_rejects_a_bad_draft_factor_naming_it(value, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        PresizeConfig.build(draft_factor=value)
