"""Listing inputs: stable order, labels from folders, content sniffing, manifests, clear errors."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from conftest import encode, gradient, make_labelled
from imgtools.config import LabelSource
from imgtools.errors import SourceError
from imgtools.sources import list_source, read_bytes


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "src"
    png = encode(Image.fromarray(gradient(8, 8)), "PNG")
    for rel in ["b/2.png", "a/10.png", "a/9.PNG", "top.png", "a/deep/x.png", ".hidden/y.png", "a/.z.png",
                "notes.txt", "a/no-extension", "a/odd.data"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"text, not an image" if rel == "a/odd.data" else
                                 b"hello" if rel == "notes.txt" else png)
    return root


def test_folder_listing_is_sorted_recursive_and_skips_hidden_and_non_images(tree):
    listing = list_source(str(tree))
    assert list(listing.items["relpath"]) == ["a/10.png", "a/9.PNG", "a/deep/x.png", "a/no-extension", "b/2.png",
                                              "top.png"]
    assert list(listing.items["index"]) == list(range(6))
    assert all(o.startswith("file://") and o.endswith(r)
               for o, r in zip(listing.items["origin"], listing.items["relpath"]))


def test_labels_come_from_the_first_folder_level(tree):
    listing = list_source(str(tree))
    assert listing.label_names == ("a", "b")
    assert list(listing.items["label"].fillna("-")) == ["a", "a", "a", "a", "b", "-"]
    assert list(listing.items["label_id"]) == [0, 0, 0, 0, 1, -1]


def test_labels_none_gives_no_labels(tree):
    listing = list_source(str(tree), LabelSource.NONE)
    assert listing.label_names == () and set(listing.items["label_id"]) == {-1}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_manifest_keeps_its_order_and_resolves_relative_and_absolute_paths(tmp_path, suffix):
    truth = make_labelled(tmp_path / "imgs", per_class=3, classes=2)
    rows = [{"path": f"imgs/{rel}", "label": f"c{c}"} for rel, c in reversed(truth)]
    rows[0]["path"] = str(tmp_path / "imgs" / truth[-1][0])  # absolute
    table = pd.DataFrame(rows)
    path = tmp_path / f"list{suffix}"
    table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path, index=False)
    listing = list_source(str(path))
    assert [o.split("imgs/")[1] for o in listing.items["origin"]] == [rel for rel, _ in reversed(truth)]
    assert listing.label_names == ("c0", "c1")
    assert list(listing.items["label_id"]) == [c for _, c in reversed(truth)]
    assert all(b == b"" or isinstance(b, bytes) for b in read_bytes(list(listing.items["origin"])))


def test_manifest_numeric_labels_sort_as_numbers(tmp_path):
    (tmp_path / "a.png").write_bytes(encode(Image.new("RGB", (2, 2)), "PNG"))
    pd.DataFrame({"path": ["a.png"] * 3, "label": [10, 9, 2]}).to_csv(tmp_path / "m.csv", index=False)
    assert list_source(str(tmp_path / "m.csv")).label_names == ("2", "9", "10")


@pytest.mark.parametrize("setup,match", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "holds no image files"),
    (lambda p: p.write_text("x"), "is a file"),
])
def test_bad_sources_raise_source_error_naming_them(tmp_path, setup, match):
    target = tmp_path / "source"
    setup(target)
    with pytest.raises(SourceError, match=match) as info:
        list_source(str(target))
    assert "source" in str(info.value)


def test_manifest_without_path_column_is_refused(tmp_path):
    pd.DataFrame({"file": ["a.png"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(SourceError, match="no 'path' column"):
        list_source(str(tmp_path / "m.csv"))


def test_read_bytes_returns_errors_in_place(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    got = read_bytes([f"file://{tmp_path}/a.bin", f"file://{tmp_path}/missing.bin", "nosuch://x",
                      str(tmp_path / "a.bin"), "memory://imgtools-test/m.bin"])
    assert got[0] == got[3] == b"abc" and isinstance(got[1], FileNotFoundError) and isinstance(got[2], Exception)
    assert isinstance(got[4], FileNotFoundError)  # another filesystem, asked on its own


@pytest.mark.parametrize("protocol", ["file", "memory"])
@pytest.mark.parametrize("base", ["/data/set", "/", "/data/set/"])
@pytest.mark.parametrize("value", ["c0/1.jpg", "./c0//1.jpg", "c0/../1.jpg", "../up.jpg", "..dots.jpg", "a\\b.jpg",
                                   "/abs/x.jpg", "gs://bucket/x.jpg", "c0/./x/", "é/ü.jpg", "a/b/../../.."])
def test_the_fast_manifest_resolver_equals_the_reference_resolution(protocol, base, value):
    import fsspec

    from imgtools.manifests import _resolve, _resolver

    fs = fsspec.filesystem(protocol)
    assert _resolver(fs, base)(value) == _resolve(fs, base, value)
