"""SOURCE into an OUT on object storage: one archive pass (`curation.fetch.mirror.extract_archive`, every member wanted)
into a local `raw/` vs into `raw/` on moto's S3 server on 127.0.0.1 (each member committed by one upload), in one
run, alternating, best of `--repeats`. This is the pass the client makes over an archive on its own disk when OUT
is a bucket (docs/scale.md). moto is a Python server on the same cores, so the bucket figures are a floor for
the per-object overhead, not a real store's throughput.

Clips as `bench.mirror` makes them (10 s, 640x360 h264 ~1 Mbit/s + AAC, noisy). Writes `<out>/mirror_store.json`.
Run: `python -m bench.mirror_store --out work/bench` (needs the dev extra: moto[server]).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.mirror import _distinct_clips, _mirror, _names, _timed
from curation.fetch.mirror import extract_archive, member_key
from manifests.io import write_json
from tests.s3_server import S3Server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="work/bench")
    parser.add_argument("--members", type=int, default=48, help="members of the archive (~1.3 MB each)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per target, best kept")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve() / "mirror_store"
    names = _names(args.members)
    _, archive = _mirror(out / "archive", names, _distinct_clips(out / "distinct", 4))
    wanted = {member_key(f"{n}.mp4"): f"{n[:11]}_{i:07d}_{i + 1:07d}" for i, n in enumerate(names)}
    load_before = os.getloadavg()
    best = {"local": (float("inf"), float("inf")), "bucket": (float("inf"), float("inf"))}
    with S3Server() as s3:
        os.environ.update(s3.env)
        s3.client().create_bucket(Bucket="bench")
        for rep in range(args.repeats):
            for target in best:
                raw = tempfile.mkdtemp(dir=out) if target == "local" else f"s3://bench/run{rep}/raw"
                wall, cpu = _timed(lambda raw=raw: extract_archive(str(archive), wanted, raw, f"{raw}/source_index"))
                best[target] = min(best[target], (wall, cpu))
                if target == "local":
                    shutil.rmtree(raw)
    size_mb = archive.stat().st_size / 1e6
    results = {target: {"s": round(wall, 3), "mb_per_s": round(size_mb / wall, 1), "client_cpu_s": round(cpu, 3)}
               for target, (wall, cpu) in best.items()}
    results.update(archive_mb=round(size_mb, 1), members=len(names),
                   **{"ratio_wall (bucket / local)": round(best["bucket"][0] / best["local"][0], 2),
                      "upload_overhead_ms_per_member": round(1000 * (best["bucket"][0] - best["local"][0])
                                                             / len(names), 1)},
                   loadavg_before=[round(x, 2) for x in load_before],
                   loadavg_after=[round(x, 2) for x in os.getloadavg()])
    write_json(Path(args.out).resolve() / "mirror_store.json", results)
    shutil.rmtree(out / "archive")
    print(f"archive {results['archive_mb']} MB, {len(names)} members: into a local raw/ "
          f"{results['local']['mb_per_s']} MB/s, into a bucket's raw/ {results['bucket']['mb_per_s']} MB/s "
          f"({results['upload_overhead_ms_per_member']} ms more per member)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
