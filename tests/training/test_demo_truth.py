import numpy as np
import pandas as pd

from training.config import DataConfig
from training.demo_truth import find_truth, retrieval_ceiling


def _frames(clip: str, category: int, visible: bool, sound: float | None, scales: list[float]) -> pd.DataFrame:
    n = len(scales)
    return pd.DataFrame({"clip_id": clip, "t": np.arange(n) / 10, "category": category, "visible": visible,
                         "matched": sound == category, "scale": np.float32(scales), "category2": np.nan,
                         "visible2": None, "sound_category": sound})


def test_the_truth_oracle_picks_among_frames_the_audio_cannot_tell_apart(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "raw").mkdir()
    pd.concat([
        _frames("a", 0, True, 0, [0.4, 0.5, 0.6]),
        _frames("b", 0, True, 0, [0.45, 0.5, 0.55]),  # same category, size within a's range: a and b collide
        _frames("c", 1, True, 1, [0.9, 0.9, 0.9]),    # its own category: always found
        _frames("d", 2, False, 2, [0.5, 0.5, 0.5]),   # sound only: the frame shows nothing the audio names
    ]).to_parquet(tmp_path / "raw" / "truth.parquet")
    truth = find_truth(DataConfig(shards=str(tmp_path / "shards")))
    assert truth == tmp_path / "raw" / "truth.parquet"
    pools = [np.array([i] + [j for j in range(4) if j != i]) for i in range(4)]
    # a: {a, b} fit -> 1/2; b: its range 0.44..0.56 holds a's frame (0.5) -> 1/2; c: 1; d: 0
    assert retrieval_ceiling(truth, ["a", "b", "c", "d"], [0.1] * 4, pools) == (0.5 + 0.5 + 1 + 0) / 4
    assert find_truth(DataConfig(shards=str(tmp_path / "shards" / "x-{0..1}.tar"))) is None
