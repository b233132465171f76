"""Clips from a mirror (curation.fetch.mirror): archives read as streams, loose clips linked, a bucket through
storage; damaged archives, corrupt members and missing clips end as per-clip failures, never the run's."""

import io
import json
import os
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import SHARED_REAL, make_av

from curation.__main__ import main
from curation.clip_cache import ClipJob
from curation.config import load_config
from curation.errors import SourceError
from curation.fetch.mirror import extract_archive, member_key, plan_source, resolve_source, row_key, source_jobs
from curation.pipeline import run
from manifests.readers import read_vggsound

# the archives repeat two clips' bytes under many names: the duplicate filter would (rightly) keep one of each
FAST = {"dataset": "vggsound", "score.scorer": "none", "select.keep_quantile": None, "dask.workers": 1,
        "dask.clips_per_task": 4, "decode.short_side": 112, "filters.reject_duplicates": False}


@pytest.fixture(scope="module")
def ids() -> list[str]:
    """Real VGGSound member names (`<ytid>_<start:06d>`), one of them starting with '-' like some ytids."""
    if not SHARED_REAL.is_dir():
        pytest.skip("../shared/data/real is not beside this checkout")
    names = [line.split(",")[0][:-4] for line in (SHARED_REAL / "vggsound_test.csv").read_text().splitlines()]
    return names[:9] + [next(n for n in names if n.startswith("-"))]


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("clips")
    return [make_av(folder / f"c{i}.mp4", 4, size="160x120", freq=330 * (i + 1)).read_bytes() for i in range(2)]


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _csv(path: Path, names: list[str], four_columns: bool = False) -> Path:
    if four_columns:  # the original list: ytid,start_seconds,label,split (start unpadded)
        rows = [f"{n[:11]},{int(n[12:])},label {i % 2},test" for i, n in enumerate(names)]
    else:  # the mirrors' file list: <ytid>_<start:06d>.mp4,label
        rows = [f"{n}.mp4,label {i % 2}" for i, n in enumerate(names)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _clip_id(name: str) -> str:
    start = int(name[12:])
    return f"{name[:11]}_{start * 1000:07d}_{(start + 10) * 1000:07d}"


def _statuses(out: Path) -> dict[str, str]:
    """clip_id -> error kind, or status where there is none."""
    clips = pd.read_parquet(out / "manifests" / "clips.parquet")
    kinds = clips["error_kind"].where(clips["error_kind"].notna(), clips["status"])
    return dict(zip(clips["clip_id"], kinds, strict=True))


def _source_note(out: Path) -> dict:
    return json.loads((out / "manifests" / "run.json").read_text())["source"]


def _shard_hashes(out: Path) -> dict[str, str]:
    shards = pd.read_parquet(out / "manifests" / "shards.parquet")
    return dict(zip(shards["shard"], shards["sha256"], strict=True))


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, ids, clip_bytes) -> dict:
    """Two archives (tar.gz, tar) of the mirror's layout: good clips, a cut mp4, garbage bytes, a member in a
    folder, one no row asks for; and a clip list with one row that no archive holds."""
    root = tmp_path_factory.mktemp("mirror")
    good, other = clip_bytes
    a = {f"{ids[0]}.mp4": good, f"{ids[1]}.mp4": other, f"{ids[2]}.mp4": good[: len(good) // 2],
         f"{ids[3]}.mp4": bytes(range(256)) * 64, f"vggsound/{ids[4]}.mp4": other, f"{ids[8]}.mp4": good}
    b = {f"{ids[5]}.mp4": good, f"{ids[9]}.mp4": other}
    archives = [_archive(root / "vggsound_00.tar.gz", a), _archive(root / "vggsound_01.tar", b)]
    listed = [ids[i] for i in (0, 1, 2, 3, 4, 5, 9, 6)]  # ids[6]: in no archive; ids[8]: in one, not listed
    expected = {_clip_id(ids[i]): "ok" for i in (0, 1, 4, 5, 9)}
    expected.update({_clip_id(ids[2]): "truncated", _clip_id(ids[3]): "not_media",
                     _clip_id(ids[6]): "missing_source"})
    return {"root": root, "archives": archives, "csv": _csv(root / "vggsound.csv", listed), "expected": expected,
            "members": {**a, **b}}


def test_member_and_row_keys_match_in_both_csv_forms(tmp_path, ids):
    assert member_key(f"some/dir/{ids[9]}.mp4") == ids[9] and member_key(f"{ids[0][:11]}_30.MP4") == \
        f"{ids[0][:11]}_000030"
    assert member_key("README.md") is None and member_key(f"{ids[0]}.mp4.part") is None
    for four in (False, True):
        rows = read_vggsound(_csv(tmp_path / f"{four}.csv", ids, four_columns=four)).table.to_pylist()
        jobs = [ClipJob(r["clip_id"], None, None, r["start_s"], r["end_s"], r["ytid"]) for r in rows]
        assert [row_key(j) for j in jobs] == ids and [j.clip_id for j in jobs] == [_clip_id(n) for n in ids]


def test_an_archive_pass_extracts_listed_members_only_and_indexes_all(tmp_path, mirror, ids):
    raw = tmp_path / "raw"
    raw.mkdir()
    wanted = {ids[0]: _clip_id(ids[0]), ids[4]: _clip_id(ids[4])}
    done = extract_archive(str(mirror["archives"][0]), wanted, str(raw), str(raw / "source_index"))
    assert (done.members, done.extracted, done.damaged) == (6, 2, None)
    assert (raw / f"{_clip_id(ids[0])}.mp4").read_bytes() == mirror["members"][f"{ids[0]}.mp4"]
    assert sorted(p.name for p in raw.glob("*.mp4")) == sorted(f"{_clip_id(ids[i])}.mp4" for i in (0, 4))
    assert not list(raw.glob(".*"))  # no temp file left behind


@pytest.mark.parametrize("damage", ["truncated_gzip", "broken_header", "not_gzip"])
def test_a_damaged_archive_fails_only_the_clips_it_can_no_longer_reach(tmp_path, ids, clip_bytes, damage):
    members = {f"{ids[i]}.mp4": clip_bytes[i % 2] for i in range(4)}
    path = _archive(tmp_path / ("a.tar" if damage == "broken_header" else "a.tar.gz"), members)
    data = bytearray(path.read_bytes())
    if damage == "truncated_gzip":  # cut inside the third member
        cut = 512 * 3 + len(clip_bytes[0]) + len(clip_bytes[1]) + 2000
        data = data[:cut]
    elif damage == "broken_header":
        second = 512 + (len(clip_bytes[0]) + 511) // 512 * 512
        data[second:second + 100] = b"\x7f" * 100
    else:
        data[:4] = b"junk"
    path.write_bytes(bytes(data))
    jobs = [ClipJob(_clip_id(n), None, None, float(int(n[12:])), int(n[12:]) + 10.0, n[:11]) for n in ids[:4]]
    raw = tmp_path / "raw"
    plan = plan_source(resolve_source(str(path)), jobs, raw)
    done = extract_archive(plan.archives[0], plan.wanted, str(raw), str(raw / "source_index"))
    ready, failed = source_jobs(plan, jobs, raw, lost={})
    reached = {"truncated_gzip": 2, "broken_header": 1, "not_gzip": 0}[damage]
    assert done.damaged and done.extracted == reached
    assert [j.clip_id for j in ready] == [j.clip_id for j in jobs[:reached]]
    assert all(j.start_s == 0.0 and j.end_s == 10.0 and Path(j.path).parent == raw for j in ready)
    assert {o.error_kind for o in failed} == {"archive_damaged"} and len(failed) == 4 - reached
    assert not list(raw.glob(".*.tmp"))
    # a rerun does not read the damaged archive again (unchanged): its listing says what it could reach
    assert plan_source(resolve_source(str(path)), jobs, raw).archives == ()


def test_corrupt_gzip_data_is_found_even_where_inflate_does_not_stumble(tmp_path, ids, clip_bytes):
    path = _archive(tmp_path / "a.tar.gz", {f"{ids[i]}.mp4": clip_bytes[i % 2] for i in range(4)})
    data = bytearray(path.read_bytes())
    at = len(data) * 7 // 10
    data[at:at + 64] = bytes(b ^ 0x5A for b in data[at:at + 64])  # an inflate error, or a CRC mismatch at the end
    path.write_bytes(bytes(data))
    done = extract_archive(str(path), {}, str(tmp_path / "raw"), str(tmp_path / "raw" / "source_index"))
    assert done.damaged and ("CRC check failed" in done.damaged or "invalid" in done.damaged)


def test_clips_of_an_archive_whose_task_died_are_worker_lost_and_retried_by_a_rerun(tmp_path, mirror, ids):
    jobs = [ClipJob(_clip_id(n), None, None, float(int(n[12:])), int(n[12:]) + 10.0, n[:11]) for n in ids[:2]]
    plan = plan_source(resolve_source(str(mirror["archives"][0])), jobs, tmp_path / "raw")
    ready, failed = source_jobs(plan, jobs, tmp_path / "raw", lost={plan.archives[0]: "KilledWorker: ..."})
    assert ready == [] and {o.error_kind for o in failed} == {"worker_lost"}
    assert plan_source(resolve_source(str(mirror["archives"][0])), jobs, tmp_path / "raw").archives == plan.archives


def test_unusable_sources_are_one_line_errors_before_any_work(tmp_path, mirror, capsys):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no clips here")
    for spec, words in ((tmp_path / "nope", "no such file or folder"), (tmp_path / "x_*.tar.gz", "matches no file"),
                        (empty, "no .tar/.tar.gz archives"), (mirror["csv"], "no .tar/.tar.gz archives")):
        with pytest.raises(SourceError, match=words):
            resolve_source(str(spec))
        code = main(["run", "--dataset", "vggsound", "--meta", str(mirror["csv"]), "--out", str(tmp_path / "out"),
                     "--source", str(spec), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: SOURCE") and err.count("\n") == 1 and words in err
    assert not (tmp_path / "out" / "shards").exists()


def test_a_glob_of_archives_curates_and_a_rerun_reads_no_finished_archive(tmp_path, mirror, ids):
    out = tmp_path / "run"
    cfg = load_config(None, {**FAST, "meta": str(mirror["csv"]), "out": str(out),
                             "source.path": str(mirror["root"] / "vggsound_*.tar*")})
    run(cfg, progress=False)
    assert _statuses(out) == mirror["expected"]
    note = _source_note(out)
    assert (note["archives"], note["archives_read"], note["extracted"], note["damaged"]) == (2, 2, 7, {})
    assert not (out / "raw" / f"{_clip_id(ids[8])}.mp4").exists()  # in an archive, not in the list
    hashes = _shard_hashes(out)

    run(cfg, progress=False)
    assert _source_note(out)["archives_read"] == 0 and _shard_hashes(out) == hashes

    (out / "raw" / f"{_clip_id(ids[9])}.mp4").unlink()  # only the archive that holds it is read again
    jobs = [ClipJob(r["clip_id"], None, None, r["start_s"], r["end_s"], r["ytid"])
            for r in read_vggsound(mirror["csv"]).table.to_pylist()]
    plan = plan_source(resolve_source(cfg.source.path), jobs, out / "raw")
    assert plan.archives == (str(mirror["archives"][1]),) and plan.skipped == 1
    assert plan.wanted == {ids[9]: _clip_id(ids[9]), ids[6]: _clip_id(ids[6])}  # and the one no archive holds


def test_a_folder_links_loose_clips_and_reads_the_archives_in_it(tmp_path, ids, clip_bytes):
    folder = tmp_path / "mirror"
    (folder / "a" / "b").mkdir(parents=True)
    loose = [folder / "a" / f"{ids[0]}.mp4", folder / "a" / "b" / f"{ids[1]}.mp4"]
    for path, data in zip(loose, clip_bytes, strict=True):
        path.write_bytes(data)
    members = {f"{ids[2]}.mp4": clip_bytes[0], f"{ids[3]}.mp4": clip_bytes[1]}
    archive = _archive(folder / "vggsound_07.tar.gz", members)
    archive.write_bytes(archive.read_bytes()[:512 * 2 + len(clip_bytes[0]) + 3000])  # cut inside the 2nd member
    out = tmp_path / "run"
    csv = _csv(tmp_path / "vggsound.csv", [ids[i] for i in (0, 1, 2, 3, 6)], four_columns=True)
    run(load_config(None, {**FAST, "meta": str(csv), "out": str(out), "source.path": str(folder)}), progress=False)
    assert _statuses(out) == {_clip_id(ids[0]): "ok", _clip_id(ids[1]): "ok", _clip_id(ids[2]): "ok",
                              _clip_id(ids[3]): "archive_damaged", _clip_id(ids[6]): "archive_damaged"}
    for path, name in zip(loose, ids[:2], strict=True):
        assert os.path.samefile(out / "raw" / f"{_clip_id(name)}.mp4", path)  # the same file, not a copy


def test_archives_in_a_bucket_are_read_by_the_workers(tmp_path, mirror, s3):
    s3.client().create_bucket(Bucket="vggsound-mirror")
    for path in mirror["archives"]:
        s3.client().upload_file(str(path), "vggsound-mirror", f"hf/{path.name}")
    out = tmp_path / "run"
    run(load_config(None, {**FAST, "meta": str(mirror["csv"]), "out": str(out),
                           "source.path": "s3://vggsound-mirror/hf/vggsound_*.tar*"}), progress=False)
    assert _statuses(out) == mirror["expected"]
    assert _source_note(out)["archives_read"] == 2
    with pytest.raises(SourceError, match="matches no file"):
        resolve_source("s3://vggsound-mirror/elsewhere/*.tar.gz")


def test_source_is_a_config_option_with_a_flag_and_not_for_the_demo_world(tmp_path):
    from curation.config import ConfigError

    path = tmp_path / "c.toml"
    path.write_text('dataset = "vggsound"\nmeta = "v.csv"\n[source]\npath = "/data/vggsound_*.tar.gz"\n')
    assert load_config(path).source.path == "/data/vggsound_*.tar.gz"
    with pytest.raises(ConfigError, match="source.path: the demo world"):
        load_config(None, {"source.path": "/data/x.tar"})
