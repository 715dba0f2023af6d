"""Planning: a dry run lists and plans without writing (inputs, labels, chunks, tasks, output size, chunks an
earlier run finished); chunks are grouped into at most about MAX_TASKS tasks, consecutive and in order."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

import imgtools
from conftest import tree_bytes
from imgtools.config import PresizeConfig
from imgtools.plan import MAX_TASKS, ChunkJob, group_tasks


def test_a_dry_run_writes_nothing_and_counts_what_the_run_would_do(labelled_dir, tmp_path):
    dest = tmp_path / "out.zarr"
    config = PresizeConfig.build(sizes=[16, "32x24"], chunk=7)
    plan = imgtools.dry_run(str(labelled_dir), str(dest), config=config)
    assert not dest.exists()
    assert (plan.inputs, plan.chunks, plan.tasks, plan.chunks_done) == (80, 12, 12, 0)
    assert plan.label_names == ("class0", "class1", "class2", "class3")
    assert plan.output_bytes == {"16x16": 80 * 16 * 16 * 3, "32x24": 80 * 32 * 24 * 3} and not plan.estimated


def test_a_dry_run_after_a_finished_run_counts_its_chunks_done_and_changes_nothing(labelled_dir, tmp_path):
    dest = tmp_path / "out.zarr"
    config = PresizeConfig.build(sizes=[16], chunk=32)
    imgtools.presize(str(labelled_dir), str(dest), config=config, workers=0, progress=False)
    before = tree_bytes(dest)
    plan = imgtools.dry_run(str(labelled_dir), str(dest), config=config)
    assert (plan.chunks, plan.chunks_done, plan.tasks) == (3, 3, 0)
    assert tree_bytes(dest) == before


@pytest.mark.parametrize("fmt,estimated", [("jpeg", True), ("png", True), ("npy", False)])
def test_the_output_size_is_exact_for_arrays_and_an_estimate_for_files(labelled_dir, tmp_path, fmt, estimated):
    plan = imgtools.dry_run(str(labelled_dir), str(tmp_path / "o"), sizes=[20], format=fmt)
    assert plan.estimated is estimated and plan.output_bytes["20x20"] > 0
    assert (plan.output_bytes["20x20"] == 80 * 20 * 20 * 3) is not estimated


def test_the_cli_dry_run_prints_the_plan_and_leaves_dest_absent(labelled_dir, tmp_path, cli_env):
    proc = subprocess.run([sys.executable, "-m", "imgtools.cli", "presize", str(labelled_dir), str(tmp_path / "o"),
                           "--size", "16", "--chunk", "20", "--dry-run"],
                          capture_output=True, text=True, env=cli_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "inputs: 80" in proc.stdout and "chunks: 4 of 20 images, 0 done" in proc.stdout
    assert "labels: 4 (class0, class1, class2, class3)" in proc.stdout and "nothing written" in proc.stdout
    assert not (tmp_path / "o").exists()


def _jobs(n_chunks: int, chunk: int = 2) -> tuple[list[ChunkJob], pd.DataFrame]:
    items = pd.DataFrame({"index": range(n_chunks * chunk), "origin": [f"/x/{i}.jpg" for i in range(n_chunks * chunk)]})
    return [ChunkJob(k, items.iloc[k * chunk : (k + 1) * chunk]) for k in range(n_chunks)], items


@pytest.mark.parametrize("n_chunks,max_tasks,sizes", [(10, 3, [4, 4, 2]), (5, 10, [1, 1, 1, 1, 1]), (7, 7, [1] * 7),
                                                      (8, 1, [8])])
def test_many_chunks_are_grouped_into_consecutive_tasks_up_to_max_tasks(n_chunks, max_tasks, sizes):
    todo, items = _jobs(n_chunks)
    tasks = group_tasks(todo, items, 2, max_tasks=max_tasks)
    assert [len(t) for t in tasks] == sizes
    assert [job.index for task in tasks for job in task] == list(range(n_chunks))


def test_a_hundred_million_images_make_at_most_max_tasks_tasks():
    n_chunks = 100_000_000 // 256 + 1
    items = pd.DataFrame({"index": [0], "origin": ["/x/0.jpg"]})
    todo = [ChunkJob(k, items) for k in range(n_chunks)]
    assert len(group_tasks(todo, items, 256)) <= MAX_TASKS


def _manifest(tmp_path, kind: str, rows: dict) -> str:
    path = tmp_path / f"list.{kind}"
    frame = pd.DataFrame(rows)
    frame.to_csv(path, index=False) if kind == "csv" else frame.to_parquet(path, index=False)
    return str(path)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
@pytest.mark.parametrize("labels", [["b", "a", None, "a"], [3, 10, 2, 3], None])
def test_a_manifest_summarised_batch_by_batch_agrees_with_its_listing(tmp_path, monkeypatch, kind, labels):
    from imgtools import listing

    monkeypatch.setattr(listing, "SUMMARY_BATCH", 3)  # several batches
    rows = {"path": [f"d/{i}.jpg" for i in range(4)] * 3} | ({"label": labels * 3} if labels else {})
    url = _manifest(tmp_path, kind, rows)
    summary = listing.summarize_source(url)
    full = listing.list_source(url)
    assert (summary.inputs, summary.label_names, summary.streams) == (len(full), full.label_names, False)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
@pytest.mark.parametrize("rows,message", [({"file": ["a.jpg"]}, "no 'path' column"),
                                          ({"path": ["a.jpg", None]}, "empty or non-text path")])
def test_a_bad_manifest_is_refused_by_the_summary_as_by_the_listing(tmp_path, kind, rows, message):
    from imgtools.errors import SourceError
    from imgtools.listing import list_source, summarize_source

    url = _manifest(tmp_path, kind, rows)
    for read in (summarize_source, list_source):
        with pytest.raises(SourceError, match=message):
            read(url)


def test_a_dry_run_of_a_manifest_counted_in_batches_plans_what_a_listed_one_plans(labelled_dir, tmp_path):
    paths = sorted(str(p) for p in labelled_dir.rglob("*.*"))
    url = _manifest(tmp_path, "parquet", {"path": paths, "label": [p.split("/")[-2] for p in paths]})
    config = PresizeConfig.build(sizes=[16], chunk=16)
    dest = tmp_path / "out.zarr"
    counted = imgtools.dry_run(url, str(dest), config=config)
    listed = imgtools.dry_run(url, str(dest), config=config, masks=str(labelled_dir))  # masks: the listing path
    assert (counted.inputs, counted.label_names, counted.chunks, counted.tasks, counted.chunks_done) == (
        listed.inputs, listed.label_names, listed.chunks, listed.tasks, listed.chunks_done) == (
        80, ("class0", "class1", "class2", "class3"), 5, 5, 0)
    imgtools.presize(url, str(dest), config=config, workers=0, progress=False)
    assert imgtools.dry_run(url, str(dest), config=config).chunks_done == 5


def test_a_blank_path_in_a_parquet_manifest_is_refused_by_the_summary_as_by_the_listing(tmp_path):
    from imgtools.errors import SourceError
    from imgtools.listing import list_source, summarize_source

    url = _manifest(tmp_path, "parquet", {"path": ["a.jpg", "  "]})  # (a CSV reader skips a blank line)
    for read in (summarize_source, list_source):
        with pytest.raises(SourceError, match="empty or non-text path"):
            read(url)


@pytest.mark.parametrize(("n_chunks", "tasks"), [(1, 1), (118, 118), (256, 256), (257, 129), (1172, 235),
                                                 (390_626, 19_532)])
def test_a_run_of_many_chunks_has_fewer_tasks_of_several_chunks_and_task_count_agrees(n_chunks, tasks):
    from imgtools.plan import group_runs, task_count

    todo = [ChunkJob(k, None) for k in range(n_chunks)]
    grouped = group_runs(todo)
    assert len(grouped) == task_count(n_chunks) == tasks
    assert [job.index for task in grouped for job in task] == list(range(n_chunks))
    assert len({len(task) for task in grouped[:-1]}) <= 1  # equal runs, the last one shorter
