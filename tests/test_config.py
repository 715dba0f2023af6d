"""The config object checks every value once and names a bad one."""

from __future__ import annotations

import pickle

import pytest

from imgtools.config import OutputFormat, PresizeConfig, ResizeMode, Size, parse_color, parse_size
from imgtools.errors import ConfigError, ImgtoolsError


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


def test_errors_are_builtin_subclasses_and_pickle():
    err = ConfigError("size '0' is bad")
    assert isinstance(err, ValueError) and isinstance(err, ImgtoolsError)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is ConfigError and str(again) == str(err)
    assert OutputFormat.ZARR.is_array and not OutputFormat.PNG.is_array
