"""Video decoding against files written here with PyAV: known colours, rates, lengths and tones."""

import pickle
from fractions import Fraction

import av
import numpy as np
import pytest

from vmjax.data import video

LEVELS = (30, 90, 150, 210)


def _colours(n):
    """uint8 [n, 3]: any two colours differ by 60 in some channel (frame i is painted colour i)."""
    i = np.arange(n)
    return np.take(LEVELS, np.stack([i % 4, i // 4 % 4, i // 16], axis=1)).astype(np.uint8)


def _write(path, images, *, fps, tone_hz=None, audio_rate=44_100, layout="stereo"):
    """h264 video of uint8 [t, h, w, 3] images; with a tone, AAC audio as long as the video."""
    _, height, width, _ = images.shape
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "8", "preset": "ultrafast", "threads": "1"}
        sound = None
        if tone_hz is not None:
            sound = container.add_stream("aac", rate=audio_rate, layout=layout)
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
        if sound is not None:
            t = np.arange(round(len(images) / fps * audio_rate)) / audio_rate
            wave = (0.5 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
            channels = np.tile(wave, (len(sound.layout.channels), 1))
            frame = av.AudioFrame.from_ndarray(channels, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = audio_rate, 0
            container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return str(path)


def _solid(colours, height=48, width=64):
    return np.broadcast_to(colours[:, None, None, :], (len(colours), height, width, 3)).copy()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    gradient = np.zeros([4, 48, 96, 3], np.uint8)
    gradient[..., 0] = np.arange(96)[None, None, :] * 2 + 30
    gradient[..., 1] = np.arange(48)[None, :, None] * 4 + 20
    gradient[..., 2] = 128
    return {
        # 40 frames at 8 fps = 5 s, a 1 kHz tone at 44.1 kHz stereo (decoding must resample)
        "colours": _write(d / "colours.mp4", _solid(_colours(40)), fps=8, tone_hz=1000),
        "short": _write(d / "short.mp4", _solid(_colours(3)), fps=8),
        "ntsc": _write(
            d / "ntsc.mp4", np.zeros([96, 16, 16, 3], np.uint8), fps=Fraction(30000, 1001)
        ),
        "gradient": _write(d / "gradient.mp4", gradient, fps=8),
    }


def _check_colours(out, want_indices):
    """Real frames show the colours of `want_indices`, within codec error; padding is black."""
    n = len(want_indices)
    np.testing.assert_array_equal(out["mask"], np.arange(len(out["mask"])) < n)
    np.testing.assert_array_equal(out["frame_indices"][:n], want_indices)
    palette = _colours(40).astype(np.float64)
    for k, want in enumerate(want_indices):
        frame = out["frames"][k].astype(np.float64)
        assert np.abs(frame - palette[want]).mean() < 8, (k, want)
        assert np.argmin(np.abs(frame.mean(axis=(0, 1)) - palette).sum(axis=1)) == want
    assert not out["frames"][n:].any()
    assert (out["frame_indices"][n:] == -1).all() and not out["timestamps"][n:].any()


def test_stride_sampling(files):
    out = video.decode_video(
        files["colours"], num_frames=8, sampling="stride", stride=4, with_audio=False
    )
    _check_colours(out, [0, 4, 8, 12, 16, 20, 24, 28])
    np.testing.assert_allclose(out["timestamps"], np.arange(8) * 4 / 8)
    assert out["fps"] == 8 and out["duration"] == pytest.approx(5.0)
    # stride 8 runs off the end of the 40 frames after 5: the rest is padding
    out = video.decode_video(
        files["colours"], num_frames=8, sampling="stride", stride=8, with_audio=False
    )
    _check_colours(out, [0, 8, 16, 24, 32])


def test_uniform_sampling(files):
    out = video.decode_video(files["colours"], num_frames=8, with_audio=False)
    # the middle frame of each of 8 segments of 5 frames
    _check_colours(out, [2, 7, 12, 17, 22, 27, 32, 37])
    out = video.decode_video(files["colours"], num_frames=50, size=(8, 8), with_audio=False)
    _check_colours(out, list(range(40)))


def test_fps_sampling_takes_one_frame_per_second(files):
    out = video.decode_video(files["colours"], num_frames=8, sampling="fps", with_audio=False)
    _check_colours(out, [0, 8, 16, 24, 32])
    np.testing.assert_allclose(out["timestamps"][:5], [0, 1, 2, 3, 4])
    out = video.decode_video(
        files["colours"], num_frames=4, sampling="fps", fps=2.0, with_audio=False
    )
    _check_colours(out, [0, 4, 8, 12])


def test_fps_sampling_takes_the_first_frame_at_or_after_each_second(files):
    # 29.97 fps: frame 30 is at 1.001 s, frame 29 at 0.968 s
    out = video.decode_video(files["ntsc"], num_frames=6, sampling="fps", size=None)
    np.testing.assert_array_equal(out["mask"], [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out["frame_indices"][:4], [0, 30, 60, 90])
    np.testing.assert_allclose(out["timestamps"][:4], np.arange(4) * 30 * 1001 / 30000)
    assert out["fps"] == pytest.approx(30000 / 1001)
    assert out["frames"].shape == (6, 16, 16, 3)


def test_short_video_is_padded_and_masked(files):
    for sampling in video.SAMPLINGS:
        out = video.decode_video(files["short"], num_frames=8, sampling=sampling, fps=8.0)
        assert out["frames"].shape == (8, 224, 224, 3) and out["frames"].dtype == np.uint8
        _check_colours(out, [0, 1, 2])


def test_output_size_and_center_crop(files):
    out = video.decode_video(files["colours"], num_frames=2, size=(24, 40), with_audio=False)
    assert out["frames"].shape == (2, 24, 40, 3)
    # 48x64 scaled by 0.625 to cover 24x40 -> 30x40, cut 3 rows from the top
    assert out["scaled_size"] == (30, 40) and out["crop_box"] == (3, 0, 24, 40)


def test_random_crop_is_reproducible_and_in_bounds(files):
    path = files["gradient"]
    full = video.decode_video(path, num_frames=4, sampling="stride", size=(32, 64))
    assert full["crop_box"] == (0, 0, 32, 64)
    lefts = set()
    for seed in range(8):
        a, b = (
            video.decode_video(
                path,
                num_frames=4,
                sampling="stride",
                size=(32, 32),
                crop="random",
                rng=np.random.default_rng(seed),
            )
            for _ in range(2)
        )
        np.testing.assert_array_equal(a["frames"], b["frames"])
        top, left, height, width = a["crop_box"]
        assert a["scaled_size"] == (32, 64) and (top, height, width) == (0, 32, 32)
        assert 0 <= left <= 32
        want = full["frames"][:, top : top + height, left : left + width]
        np.testing.assert_array_equal(a["frames"], want)
        lefts.add(left)
    assert len(lefts) > 2
    center = video.decode_video(path, num_frames=1, size=(32, 32))
    assert center["crop_box"] == (0, 16, 32, 32)
    with pytest.raises(ValueError, match="rng"):
        video.decode_video(path, num_frames=1, size=(32, 32), crop="random")


def _mel_centers():
    mel = lambda hz: 1127 * np.log(1 + np.asarray(hz) / 700)  # noqa: E731
    edges = np.linspace(mel(125), mel(7500), 66)
    return edges[1:-1]  # in mel


def test_audio_is_16k_mono_with_log_mel(files):
    out = video.decode_video(files["colours"], num_frames=1)
    assert out["has_audio"] and out["sample_rate"] == 16_000
    audio = out["audio"]
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 5 * 16_000) < 0.02 * 5 * 16_000
    assert 0.45 < np.abs(audio[8000:-8000]).max() < 0.55  # both channels' 0.5, averaged
    assert out["log_mel"].shape == (5, 96, 64) and out["log_mel"].dtype == np.float32
    peak = np.argmax(out["log_mel"].mean(axis=(0, 1)))
    assert peak == np.argmin(np.abs(_mel_centers() - 1127 * np.log(1 + 1000 / 700)))


def test_file_without_audio(files):
    out = video.decode_video(files["short"], num_frames=2)
    assert not out["has_audio"]
    assert out["audio"].shape == (0,) and out["log_mel"].shape == (0, 96, 64)
    out = video.decode_video(files["colours"], num_frames=2, with_audio=False)
    assert out["has_audio"] and out["audio"].shape == (0,) and out["log_mel"].shape == (0, 96, 64)


def _reference_log_mel(x, sr=16_000):
    """VGGish's front end written out loop by loop: DFT by definition, triangles by formula."""
    window, hop, n_fft = 400, 160, 512
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)
    num = 1 + (len(x) - window) // hop
    k = np.arange(n_fft // 2 + 1)[:, None]
    dft = np.exp(-2j * np.pi * k * np.arange(window)[None, :] / n_fft)  # zero-padded to n_fft
    frames = np.stack([hann * x[m * hop : m * hop + window] for m in range(num)])
    spec = np.abs(frames @ dft.T)
    bins_mel = 1127 * np.log(1 + np.linspace(0, sr / 2, n_fft // 2 + 1) / 700)
    edges = np.linspace(1127 * np.log(1 + 125 / 700), 1127 * np.log(1 + 7500 / 700), 66)
    weights = np.zeros([n_fft // 2 + 1, 64])
    for j in range(64):
        lo, mid, hi = edges[j], edges[j + 1], edges[j + 2]
        rising = (bins_mel > lo) & (bins_mel <= mid)
        falling = (bins_mel > mid) & (bins_mel < hi)
        weights[rising, j] = (bins_mel[rising] - lo) / (mid - lo)
        weights[falling, j] = (hi - bins_mel[falling]) / (hi - mid)
    weights[0] = 0  # DC gets no weight
    log = np.log(spec @ weights + 0.01)
    n = num // 96
    return log[: n * 96].reshape(n, 96, 64)


def test_log_mel_matches_the_equations():
    x = np.random.default_rng(0).uniform(-1, 1, 16_000)
    np.testing.assert_allclose(video.log_mel(x), _reference_log_mel(x), atol=1e-4)


def test_log_mel_shapes_silence_and_tones():
    # 1 + (n - 400) // 160 frames of 10 ms, 96 to an example, partial examples dropped
    assert video.log_mel(np.zeros(30_960)).shape == (2, 96, 64)
    assert video.log_mel(np.zeros(30_959)).shape == (1, 96, 64)
    assert video.log_mel(np.zeros(100)).shape == (0, 96, 64)
    np.testing.assert_allclose(video.log_mel(np.zeros(16_000)), np.log(0.01), rtol=1e-6)
    t = np.arange(16_000) / 16_000
    for hz in (500, 1000, 3000, 6000):
        peak = np.argmax(video.log_mel(np.sin(2 * np.pi * hz * t)).mean(axis=(0, 1)))
        assert peak == np.argmin(np.abs(_mel_centers() - 1127 * np.log(1 + hz / 700))), hz


def test_missing_corrupt_and_non_video_files_raise_video_error(tmp_path, files):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp_path / "truncated.mp4"
    data = open(files["colours"], "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    audio_only = tmp_path / "tone.wav"
    with av.open(str(audio_only), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16_000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros([1, 1600], np.int16), format="s16")
        frame.sample_rate = 16_000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    for path in (tmp_path / "missing.mp4", corrupt, truncated, audio_only):
        with pytest.raises(video.VideoError, match=str(path)) as info:
            video.decode_video(path, num_frames=2)
        assert isinstance(info.value, ValueError) and info.value.path == str(path)
        again = pickle.loads(pickle.dumps(info.value))  # grain workers pickle errors
        assert str(again) == str(info.value)
    with pytest.raises(video.VideoError, match="no video stream"):
        video.decode_video(audio_only, num_frames=2)


def test_bad_arguments_are_value_errors_before_any_io(tmp_path):
    missing = tmp_path / "missing.mp4"
    for kwargs in ({"sampling": "every"}, {"stride": 0}, {"fps": 0.0}, {"crop": "corner"}):
        with pytest.raises(ValueError) as info:
            video.decode_video(missing, num_frames=2, **kwargs)
        assert not isinstance(info.value, video.VideoError)
