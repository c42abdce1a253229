"""Generated benign test videos, encoded with PyAV (FFmpeg's encoders in its wheel), so the
tests need no system ffmpeg: scenes of `factories.photo_like` pictures drifting sideways."""

from __future__ import annotations

import io

import av
import numpy as np
import numpy.typing as npt

from tests.factories import photo_like

#: (container format for PyAV, encoder, pixel format) by short name.
KINDS: dict[str, tuple[str, str, str]] = {
    "h264.mp4": ("mp4", "libx264", "yuv420p"),
    "h264.mov": ("mov", "libx264", "yuv420p"),
    "hevc.mkv": ("matroska", "libx265", "yuv420p"),
    "vp8.webm": ("webm", "libvpx", "yuv420p"),
    "vp9.webm": ("webm", "libvpx-vp9", "yuv420p"),
    "av1.mkv": ("matroska", "libsvtav1", "yuv420p"),
    "mpeg4.avi": ("avi", "mpeg4", "yuv420p"),
    "mjpeg.avi": ("avi", "mjpeg", "yuvj420p"),
    "h264.3gp": ("3gp", "libx264", "yuv420p"),
    "h263.3gp": ("3gp", "h263", "yuv420p"),
}

_QUIET = {"x265-params": "log-level=error"}


def scene_frames(seconds: float, fps: int, width: int, height: int, seed: int = 1,
                 scene_seconds: float = 1.0, still: bool = False,
                 bars: int = 0) -> list[npt.NDArray[np.uint8]]:
    """RGB frames: a new photo-like scene every `scene_seconds`, drifting 2 px a frame
    (none when `still`); `bars` rows of black at top and bottom (letterbox)."""
    count = round(seconds * fps)
    scenes: dict[int, npt.NDArray[np.uint8]] = {}
    frames = []
    for i in range(count):
        scene = 0 if still else int(i / fps / scene_seconds)
        if scene not in scenes:
            picture = np.asarray(photo_like(seed * 1000 + scene, width, height - 2 * bars))
            scenes[scene] = picture
        picture = scenes[scene] if still else np.roll(scenes[scene], 2 * i, axis=1)
        frame = np.zeros((height, width, 3), np.uint8)
        frame[bars:height - bars] = picture
        frames.append(frame)
    return frames


def encode(frames: list[npt.NDArray[np.uint8]], kind: str = "h264.mp4", fps: int = 25,
           pts_step: int = 1, gop: int | None = None) -> bytes:
    """The frames as a video of `kind` (a key of KINDS); `pts_step` spaces timestamps out
    (in units of 1 / fps); `gop`: frames from one keyframe to the next (the encoder's
    default otherwise: 12 for FFmpeg's, 250 for x264's)."""
    fmt, encoder, pix_fmt = KINDS[kind]
    height, width = frames[0].shape[:2]
    out = io.BytesIO()
    with av.open(out, mode="w", format=fmt) as box:
        stream = box.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        quiet = {k: v for k, v in _QUIET.items() if k.split("-")[0] in encoder}
        if gop is not None:
            quiet = {**quiet, "g": str(gop)}
            if encoder == "libx264":
                quiet["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        if quiet:
            stream.options = quiet
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index * pts_step
            for packet in stream.encode(frame):
                box.mux(packet)
        for packet in stream.encode(None):
            box.mux(packet)
    return out.getvalue()


def clip(kind: str = "h264.mp4", seconds: float = 3.0, fps: int = 25, width: int = 320,
         height: int = 240, **scene: object) -> bytes:
    return encode(scene_frames(seconds, fps, width, height, **scene),  # type: ignore[arg-type]
                  kind, fps)


def audio_only_mp4(seconds: float = 1.0) -> bytes:
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as box:
        stream = box.add_stream("aac", rate=44100)
        samples = np.zeros((1, 1024), np.float32)
        for i in range(int(seconds * 44100 / 1024)):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 44100
            frame.pts = i * 1024
            for packet in stream.encode(frame):
                box.mux(packet)
        for packet in stream.encode(None):
            box.mux(packet)
    return out.getvalue()
