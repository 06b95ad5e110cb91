"""Figure 8 (issue 17): what a portrait phone video costs at export.

ffmpeg 5.1's Matroska muxer cannot carry a display rotation, so a rotated picture exported to MKV must be
turned upright, which means encoding it again (libx264, media.REENCODE_VIDEO), while MP4 keeps the rotation
and copies the picture. The default container (`auto`) therefore picks MP4 for a rotated picture. This
measures both exports of the same phone-shaped file (1080x1920 portrait: 1920x1080 H.264 at 30 fps with a
90 degree display matrix, AAC sound), each through media.mux as the export stage calls it, in one run:

  copy_mp4      container auto / mp4: the picture copied, the rotation kept
  upright_mkv   container mkv: the picture decoded, turned and encoded again

Reported: wall and CPU seconds of each, the ratio upright_mkv / copy_mp4, and the re-encode's cost as a real-
time factor (seconds of work per second of video) beside the whole dub's RTF (figure 1). Both outputs are
checked to show the same upright picture as the source.

Usage: .venv/bin/python bench/rotation.py [--seconds 60] [--json OUT.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def progress(msg: str) -> None:
    print(f"[rotation {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def phone_clip(folder: Path, seconds: float) -> Path:
    """A portrait phone recording: the sensor's landscape frames with a 90 degree display rotation."""
    import mediagen

    plain = folder / "plain.mp4"
    mediagen.ffmpeg("-f", "lavfi", "-t", f"{seconds}", "-i", "testsrc2=size=1920x1080:rate=30",
                    "-f", "lavfi", "-t", f"{seconds}", "-i", "sine=frequency=300:sample_rate=48000",
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", str(plain))
    clip = folder / "IMG_1080p_portrait.mp4"
    mediagen.ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(clip))
    plain.unlink()
    return clip


def timed(label: str, fn) -> dict:
    progress(f"{label} ...")
    cpu0, t0 = children_cpu(), time.perf_counter()
    fn()
    out = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(children_cpu() - cpu0, 2)}
    progress(f"{label}: {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the phone clip")
    parser.add_argument("--json", type=Path, help="write the results dict here")
    parser.add_argument("--quick", action="store_true", help="smoke run: a 4 s clip")
    args = parser.parse_args()
    seconds = 4.0 if args.quick else args.seconds

    import mediashapes
    from resources import media

    with tempfile.TemporaryDirectory(prefix="bench-rotation-") as tmp:
        folder = Path(tmp)
        progress(f"generating a {seconds:.0f} s 1080x1920 portrait clip")
        clip = phone_clip(folder, seconds)
        info = media.probe(clip)
        rotation = media.rotation(info.video)

        def export(container: str) -> Path:
            out = folder / f"out.{container}"
            media.mux(clip, out, has_video=True, source_lang="en", original_codec="aac", video_codec="h264",
                      dub=None, subtitles=[], container=container, rotation=rotation)
            return out

        res: dict = {"media_s": seconds, "size": "1080x1920 (1920x1080 rotated 90)", "fps": 30,
                     "rotation": rotation, "reencode": media.REENCODE_VIDEO}
        res["copy_mp4"] = timed("copy_mp4", lambda: export("mp4"))
        res["upright_mkv"] = timed("upright_mkv", lambda: export("mkv"))
        res["ratio_wall"] = round(res["upright_mkv"]["wall_s"] / max(res["copy_mp4"]["wall_s"], 1e-3), 1)
        res["ratio_cpu"] = round(res["upright_mkv"]["cpu_s"] / max(res["copy_mp4"]["cpu_s"], 1e-3), 1)
        res["reencode_rtf"] = round(res["upright_mkv"]["wall_s"] / seconds, 3)
        res["copy_rtf"] = round(res["copy_mp4"]["wall_s"] / seconds, 4)
        at = seconds / 2
        reference = mediashapes.frame(clip, at)
        res["upright"] = {c: round(mediashapes.frame_difference(reference, mediashapes.frame(folder / f"out.{c}", at)),
                                   1) for c in ("mp4", "mkv")}
        sizes = {c: (folder / f"out.{c}").stat().st_size for c in ("mp4", "mkv")}
        res["size_mb"] = {c: round(v / 1e6, 1) for c, v in sizes.items()}
        res["ffmpeg"] = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split()[2]
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
