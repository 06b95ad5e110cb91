"""The dub over the original audio.

Ducking is volume automation from the known placements of the dubbed segments (no sidechain
detection pass): the original drops by `duck_db` with short ramps around each dubbed segment.
The mix is then normalised to `target_lufs` (EBU R128 integrated) with one measured gain and a peak
limiter half a dB under the job's true-peak limit, encoded (Opus for MKV, AAC for MP4), measured again
(integrated and true peak), and, when that misses, encoded once more with the error corrected. The
`loudness` check holds the encoded track (what the export carries, as a stream copy) to the targets.
"""


import wave

import dagster as dg
import numpy as np

from dubbing_assets import checks
from dubbing_assets.dubbed_speech import dubbed_speech
from dubbing_assets.extracted_audio import MIX_RATE
from dubbing_assets.fit import Timeline
from dubbing_assets.partitions import dub_jobs
from dubbing_assets.source_media import output_container
from dubbing_assets.stage import GROUP, Timer, accepted_checks, stage_errors
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


class TimelineReader:
    """The original audio (a 16-bit WAV on the source's timeline) read on the export's timeline: silence where
    the picture is held (fit extend_video) and after the original ends."""

    def __init__(self, wav: wave.Wave_read, timeline: Timeline | None = None):
        self.wav = wav
        self.channels = wav.getnchannels()
        rate = wav.getframerate()
        timeline = timeline or Timeline(duration=wav.getnframes() / rate)
        self.pieces = timeline.pieces(rate)
        self.pos = 0  # on the export's timeline, in frames
        self.src = 0  # frames read from the WAV

    def read(self, n: int) -> np.ndarray:
        out = np.zeros((n, self.channels), dtype=np.float32)
        end = self.pos + n
        for at, length, src in self.pieces:
            lo, hi = max(at, self.pos), min(at + length, end)
            if hi <= lo or src is None:
                continue
            want = src + (lo - at)
            if want >= self.wav.getnframes():  # the original ended early: silence from here
                continue
            if want != self.src:
                self.wav.setpos(want)
                self.src = want
            raw = self.wav.readframes(hi - lo)
            got = np.frombuffer(raw, dtype="<i2").astype(np.float32).reshape(-1, self.channels) / 32768.0
            out[lo - self.pos:lo - self.pos + len(got)] = got
            self.src += len(got)
        self.pos = end
        return out


def mix_to_wav(original, dub, out, envelope: np.ndarray, duration: float, timeline: Timeline | None = None) -> None:
    """Stream original (stereo) x envelope + dub (mono, both channels) into a 16-bit WAV of `duration`
    seconds (the export's timeline), block by block, so memory stays flat however long the media is. The
    original follows the export's timeline: silence where the picture is held, and after an original that
    ends early (a video whose sound stops before its picture)."""
    frame_t = np.arange(len(envelope)) * FRAME_S
    total = int(round(duration * MIX_RATE))
    with wave.open(str(original), "rb") as o, wave.open(str(dub), "rb") as d, wave.open(str(out), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(MIX_RATE)
        source = TimelineReader(o, timeline)
        block = int(BLOCK_S * MIX_RATE)
        pos = 0
        while pos < total:
            n = min(block, total - pos)
            orig = source.read(n)
            if orig.shape[1] == 1:
                orig = np.repeat(orig, 2, axis=1)
            speech = np.frombuffer(d.readframes(n), dtype="<i2").astype(np.float32) / 32768.0
            if len(speech) < n:
                speech = np.pad(speech, (0, n - len(speech)))
            gain = np.interp((pos + np.arange(n)) / MIX_RATE, frame_t, envelope).astype(np.float32)
            mixed = (orig * gain[:, None] + speech[:, None]) * HEADROOM
            w.writeframes((np.clip(mixed, -1, 1) * 32767).astype("<i2").tobytes())
            pos += n


@dg.asset(partitions_def=dub_jobs, group_name=GROUP, kinds={"ffmpeg"}, deps=[dubbed_speech],
          code_version="2", check_specs=checks.specs("dubbed_mix"),
          description="Original audio ducked under the dub, loudness-normalised (EBU R128), encoded.")
def dubbed_mix(context: dg.AssetExecutionContext, job_store: JobStore,
               storage: MediaStorage) -> dg.MaterializeResult:
    return mix_job(job_store.get_job(context.partition_key), storage, accepted=accepted_checks(context))


def mix_job(job: JobRecord, storage: MediaStorage, accepted: frozenset[str] = frozenset()) -> dg.MaterializeResult:
    """The stage as a plain function: the original ducked under the dub, normalised, encoded, its loudness
    checked (one corrective encode when the first misses the target or the true-peak limit)."""
    speech = storage.read_json(job.id, "speech.json")
    source = storage.read_json(job.id, "source.json")
    codec, bitrate, suffix = media.MIX_CODECS[output_container(job, source)]
    opts = job.options
    if speech["no_speech"]:
        storage.write_json(job.id, "mix.json", {"no_speech": True})
        return dg.MaterializeResult(
            metadata={"no_speech": True, "note": "no speech: nothing to mix", **media.version_metadata()},
            check_results=[checks.result(checks.LOUDNESS, True, {"no_speech": True},
                                         "no speech: the export carries the original audio as it is")])
    timeline = Timeline.from_dict(speech.get("timeline"), source["duration_s"])
    duration = timeline.extended
    intervals = [(s["placed_start"], s["placed_end"]) for s in speech["segments"]]
    limit = opts.max_true_peak_db - 0.5  # the limiter works on samples; the encoder and true peak add a little
    with storage.scratch(job.id), stage_errors("dubbed_mix"), Timer() as t:
        mix_path = storage.artifact(job.id, "mix" + suffix)
        raw = storage.artifact(job.id, "mix_raw.wav")
        mix_to_wav(storage.fetch(job.id, "original.wav"), storage.fetch(job.id, "dub_track.wav"),
                   raw, duck_envelope(intervals, duration, opts.duck_db), duration, timeline)
        measured = media.measure_loudness(raw, true_peak=False)
        gain = opts.target_lufs - measured.integrated_lufs if measured.integrated_lufs > -70 else 0.0
        media.encode_audio(raw, mix_path, gain_db=gain, codec=codec, bitrate=bitrate, limit_db=limit)
        final = media.measure_loudness(mix_path)
        passes = 1
        off = opts.target_lufs - final.integrated_lufs
        if final.integrated_lufs > -70 and (abs(off) > opts.loudness_tolerance_lu / 2
                                            or final.true_peak_dbfs > opts.max_true_peak_db):
            # one corrective encode: the limiter took loudness away, or the encode overshot the peak limit
            gain += off
            limit -= max(0.0, final.true_peak_dbfs - opts.max_true_peak_db) + 0.3
            media.encode_audio(raw, mix_path, gain_db=gain, codec=codec, bitrate=bitrate, limit_db=limit)
            final = media.measure_loudness(mix_path)
            passes = 2
        raw.unlink(missing_ok=True)
        storage.save(job.id, mix_path.name)
    storage.write_json(job.id, "mix.json", {
        "no_speech": False, "file": mix_path.name, "codec": codec, "gain_db": round(gain, 2),
        "integrated_lufs": final.integrated_lufs, "lra": final.lra, "true_peak_dbfs": final.true_peak_dbfs,
        "timeline_s": round(duration, 3),
    })
    return dg.MaterializeResult(metadata={
        "integrated_lufs": final.integrated_lufs,
        "target_lufs": opts.target_lufs,
        "loudness_range_lu": final.lra,
        "true_peak_dbfs": final.true_peak_dbfs,
        "gain_db": round(gain, 2),
        "limiter_db": round(limit, 2),
        "encode_passes": passes,
        "codec": codec,
        "duck_db": opts.duck_db,
        "ducked_s": round(sum(e - s for s, e in intervals), 2),
        "timeline_s": round(duration, 3),
        "mix_s": t.seconds,
        **media.version_metadata(),
    }, check_results=[checks.loudness_check(final.integrated_lufs, final.true_peak_dbfs, opts.target_lufs,
                                            opts.loudness_tolerance_lu, opts.max_true_peak_db, accepted)])
