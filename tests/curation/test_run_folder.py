"""`storage.run_folder`: OUT opened once, a local folder worked on in place, an object store through scratch
workspaces (their uploads and downloads run against a real S3 server in test_storage_out.py)."""

import pickle
import tempfile

import pytest

from curation import storage


def test_a_local_out_is_worked_on_in_place(tmp_path):
    folder = storage.run_folder(tmp_path)
    assert isinstance(folder, storage.LocalFolder) and storage.run_folder(folder) is folder
    assert pickle.loads(pickle.dumps(folder)) == folder  # Dask tasks receive it
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    assert not folder.client_only(str(clip)) and folder.share(str(clip), "unused") == str(clip)
    with folder.workspace() as ws:
        assert ws.in_place and ws.layout == folder.layout
        location = folder.layout.raw_clip("a")
        assert ws.local(location) == ws.pull(location) == location
        with ws.clip("a", str(clip)) as path:
            assert path == str(clip)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / ".a.mp4.123.tmp").write_bytes(b"half")
    folder.remove_temp_files([folder.layout.raw])
    assert not list((tmp_path / "raw").iterdir())


def test_an_object_store_out_is_worked_on_in_scratch_folders(tmp_path):
    folder = storage.run_folder("s3://bucket/run/")
    assert isinstance(folder, storage.StoreFolder) and folder.layout.out == "s3://bucket/run"
    given = tmp_path / "best.pth"
    given.write_bytes(b"x")
    assert folder.client_only(str(given))
    assert not folder.client_only("s3://bucket/best.pth") and not folder.client_only(None)
    assert not folder.client_only(str(tmp_path / "missing.pth"))
    with folder.workspace("s2s-test-") as ws:
        assert not ws.in_place and ws.layout.out.startswith(tempfile.gettempdir())
        assert ws.local(folder.layout.ssl_model("x").model) == ws.layout.ssl_model("x").model
        with pytest.raises(ValueError):
            ws.local("s3://bucket/other/file")
