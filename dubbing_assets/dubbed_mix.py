"""The dub over the original audio.

Ducking is volume automation from the known placements of the dubbed segments (no sidechain
detection pass): the original drops by `duck_db` with short ramps around each dubbed segment.
The mix is then normalised to `target_lufs` (EBU R128 integrated) with one measured gain and a
-1 dBFS peak limiter, and encoded (Opus for MKV, AAC for MP4).
"""


import wave

import dagster as dg
import numpy as np

from dubbing_assets.dubbed_speech import dubbed_speech
from dubbing_assets.extracted_audio import MIX_RATE
from dubbing_assets.partitions import dub_jobs
from dubbing_assets.source_media import output_container
from dubbing_assets.stage import GROUP, Timer, stage_errors
from resources import media
from resources.jobstore import JobRecord, JobStore
from resources.storage import MediaStorage

RAMP_S = 0.15  # fade time into and out of a duck
FRAME_S = 0.01  # envelope resolution
HEADROOM = 0.5  # scale of the raw mix, so summing never clips before the loudness gain
BLOCK_S = 10.0


def duck_envelope(intervals: list[tuple[float, float]], duration: float, duck_db: float) -> np.ndarray:
    """Gain per FRAME_S frame: 1 outside speech, 10^(duck_db/20) inside, linear ramps of RAMP_S
    that finish before each segment starts and begin after it ends."""
    frames = int(np.ceil(duration / FRAME_S)) + 1
    t = np.arange(frames) * FRAME_S
    depth = np.zeros(frames, dtype=np.float32)  # 0 = no duck, 1 = full duck
    for start, end in intervals:
        rise = np.clip((t - (start - RAMP_S)) / RAMP_S, 0, 1)
        fall = np.clip(((end + RAMP_S) - t) / RAMP_S, 0, 1)
        depth = np.maximum(depth, np.minimum(rise, fall))
    duck = 10 ** (duck_db / 20.0)
    return (1.0 - depth * (1.0 - duck)).astype(np.float32)


def mix_to_wav(original, dub, out, envelope: np.ndarray, duration: float) -> None:
    """Stream original (stereo) x envelope + dub (mono, both channels) into a 16-bit WAV of `duration`
    seconds, block by block, so memory stays flat however long the media is. An original that ends
    early (a video whose sound stops before its picture) is continued with silence: the mix covers
    the whole length."""
    frame_t = np.arange(len(envelope)) * FRAME_S
    total = int(round(duration * MIX_RATE))
    with wave.open(str(original), "rb") as o, wave.open(str(dub), "rb") as d, wave.open(str(out), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(MIX_RATE)
        ch = o.getnchannels()
        block = int(BLOCK_S * MIX_RATE)
        pos = 0
        while pos < total:
            n = min(block, total - pos)
            orig = np.frombuffer(o.readframes(n), dtype="<i2").astype(np.float32).reshape(-1, ch) / 32768.0
            if ch == 1:
                orig = np.repeat(orig, 2, axis=1)
            if orig.shape[0] < n:
                orig = np.pad(orig, ((0, n - orig.shape[0]), (0, 0)))
            speech = np.frombuffer(d.readframes(n), dtype="<i2").astype(np.float32) / 32768.0
            if len(speech) < n:
                speech = np.pad(speech, (0, n - len(speech)))
            gain = np.interp((pos + np.arange(n)) / MIX_RATE, frame_t, envelope).astype(np.float32)
            mixed = (orig * gain[:, None] + speech[:, None]) * HEADROOM
            w.writeframes((np.clip(mixed, -1, 1) * 32767).astype("<i2").tobytes())
            pos += n


@dg.asset(partitions_def=dub_jobs, group_name=GROUP, kinds={"ffmpeg"}, deps=[dubbed_speech],
          code_version="1",
          description="Original audio ducked under the dub, loudness-normalised (EBU R128), encoded.")
def dubbed_mix(context: dg.AssetExecutionContext, job_store: JobStore,
               storage: MediaStorage) -> dg.MaterializeResult:
    return mix_job(job_store.get_job(context.partition_key), storage)


def mix_job(job: JobRecord, storage: MediaStorage) -> dg.MaterializeResult:
    """The stage as a plain function: the original ducked under the dub, normalised, encoded."""
    speech = storage.read_json(job.id, "speech.json")
    codec, bitrate, suffix = media.MIX_CODECS[output_container(job, storage.read_json(job.id, "source.json"))]
    if speech["no_speech"]:
        storage.write_json(job.id, "mix.json", {"no_speech": True})
        return dg.MaterializeResult(metadata={"no_speech": True, "note": "no speech: nothing to mix",
                                              **media.version_metadata()})
    duration = storage.read_json(job.id, "source.json")["duration_s"]
    intervals = [(s["placed_start"], s["placed_end"]) for s in speech["segments"]]
    opts = job.options
    with storage.scratch(job.id), stage_errors("dubbed_mix"), Timer() as t:
        mix_path = storage.artifact(job.id, "mix" + suffix)
        raw = storage.artifact(job.id, "mix_raw.wav")
        mix_to_wav(storage.fetch(job.id, "original.wav"), storage.fetch(job.id, "dub_track.wav"),
                   raw, duck_envelope(intervals, duration, opts.duck_db), duration)
        measured = media.measure_loudness(raw, true_peak=False)
        gain = opts.target_lufs - measured.integrated_lufs if measured.integrated_lufs > -70 else 0.0
        media.encode_audio(raw, mix_path, gain_db=gain, codec=codec, bitrate=bitrate)
        final = media.measure_loudness(mix_path)
        raw.unlink(missing_ok=True)
        storage.save(job.id, mix_path.name)
    storage.write_json(job.id, "mix.json", {
        "no_speech": False, "file": mix_path.name, "codec": codec, "gain_db": round(gain, 2),
        "integrated_lufs": final.integrated_lufs, "lra": final.lra, "true_peak_dbfs": final.true_peak_dbfs,
    })
    return dg.MaterializeResult(metadata={
        "integrated_lufs": final.integrated_lufs,
        "target_lufs": opts.target_lufs,
        "loudness_range_lu": final.lra,
        "true_peak_dbfs": final.true_peak_dbfs,
        "gain_db": round(gain, 2),
        "codec": codec,
        "duck_db": opts.duck_db,
        "ducked_s": round(sum(e - s for s, e in intervals), 2),
        "mix_s": t.seconds,
        **media.version_metadata(),
    })
