import io

import numpy as np
import soundfile

from curation.outputs.sample_media import encode_flac


def test_flac_is_lossless_at_16_bit():
    audio = np.sin(np.linspace(0, 100, 16000)).astype(np.float32) * 0.5
    decoded, _ = soundfile.read(io.BytesIO(encode_flac(audio, 16000)), dtype="float32")
    assert np.max(np.abs(decoded - audio)) < 1 / 2**15
