"""Edit and re-dub: a finished job's transcript and translation segments, edited by their owner, then dubbed
again from the speech stage on (the transcript and translation are kept as edited).

The edits go into the job's stage artifacts (translation.json, and transcript.json for the source text and the
timing), which are the inputs of dubbed_speech; the job record only counts them (`edit_revision`), so that a
save never overwrites another one it has not seen and each revision is re-dubbed at most once. A re-dub is a
queued run request (`redub:<job>:<revision>`) that the run request sensor launches: its state is read from
Dagster like every run's."""

from __future__ import annotations

import math
import re
import threading

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from dubbing_assets.jobs import REDUB_STAGES
from resources import logs
from resources.accounts import User
from resources.jobstore import JobRecord
from resources.tts import TtsError, TtsResource
from upload_api import dagster_view as dv
from upload_api.deps import current_user, dagster_instance, job_store, storage
from upload_api.routers.jobs import claim_launch, get_owned, require_artifacts, storage_call

router = APIRouter(prefix="/api/jobs", tags=["segments"])
log = logs.logging.getLogger("dubbing.api.segments")

MAX_TEXT = 1000  # characters of one segment's text
MIN_DURATION_S = 0.2  # the shortest segment a timing edit may leave
ACTIVE = {"submitted", "queued", "running", "cancelling"}
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SAVE_LOCK = threading.Lock()  # one save at a time in this process; across processes the revision decides


class SegmentEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=0, le=1_000_000)
    text: str | None = Field(None, max_length=MAX_TEXT)
    source_text: str | None = Field(None, max_length=MAX_TEXT)
    start: float | None = None
    end: float | None = None
    voice: str | None = Field(None, max_length=200)


class SegmentsEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: int | None = Field(None, ge=0)
    segments: list[SegmentEdit] = Field(min_length=1, max_length=5000)


class Invalid(Exception):
    """Edits that cannot be applied: each problem names the segment and the field."""

    def __init__(self, problems: list[dict]):
        super().__init__("; ".join(f"segment {p['id']}: {p['field']}: {p['message']}" for p in problems))
        self.problems = problems


def tts() -> TtsResource:
    from resources.settings import env_or

    return TtsResource(engine=env_or("TTS_ENGINE", "auto"), xtts_model_dir=env_or("XTTS_MODEL_DIR", ""),
                       xtts_device=env_or("XTTS_DEVICE", "cpu"))


def job_activity(job: JobRecord) -> str:
    instance = dagster_instance()
    return dv.job_state(job, dv.runs_by_job(instance, [job.id])[job.id], instance)


def read_segments(job: JobRecord) -> tuple[dict, dict, dict]:
    """(translation.json, transcript.json, source.json) of the job; 409 when there is no translation yet."""
    st = storage()
    try:
        translation = storage_call(st.read_json, job.id, "translation.json")
        transcript = storage_call(st.read_json, job.id, "transcript.json")
        source = storage_call(st.read_json, job.id, "source.json")
    except FileNotFoundError:
        raise HTTPException(409, "the job has no translation yet: segments can be edited once it has been "
                                 "transcribed and translated") from None
    return translation, transcript, source


def segments_view(job: JobRecord, state: str, translation: dict, source: dict) -> dict:
    engine = tts()
    try:
        default = ":".join(x for x in engine.resolve(job.target_lang, job.options.tts_engine, job.voice) if x)
    except TtsError:
        default = job.voice
    editable = state not in ACTIVE
    return {
        "job_id": job.id,
        "revision": job.edit_revision,
        "editable": editable,
        "reason": None if editable else f"the job is {state}: segments can be edited when its run has ended",
        "duration_s": source["duration_s"],
        "source_lang": job.source_lang,
        "target_lang": job.target_lang,
        "voice": default,
        "voices": engine.voices_for(job.target_lang),
        "segments": [{"id": s["id"], "start": s["start"], "end": s["end"], "source_text": s["source_text"],
                      "text": s["text"], "voice": s.get("voice"), "edited": bool(s.get("edited"))}
                     for s in translation["segments"]],
        "limits": {"max_text_chars": MAX_TEXT, "min_duration_s": MIN_DURATION_S},
    }


def apply_edits(job: JobRecord, translation: dict, transcript: dict, duration: float,
                edits: list[SegmentEdit], voices: list[str]) -> list[int]:
    """Apply edits to the two artifacts' segments in place; returns the ids that changed. Raises Invalid
    naming every problem: unknown or repeated ids, control characters, timing outside the media or
    overlapping a neighbour or shorter than MIN_DURATION_S, a voice the target language does not have."""
    by_id = {s["id"]: s for s in translation["segments"]}
    problems: list[dict] = []

    def bad(seg_id, field, message):
        problems.append({"id": seg_id, "field": field, "message": message})

    seen: set[int] = set()
    for edit in edits:
        if edit.id in seen:
            bad(edit.id, "id", "appears more than once in this request")
        seen.add(edit.id)
        if edit.id not in by_id:
            bad(edit.id, "id", f"no such segment (this job has ids 0..{len(by_id) - 1})" if by_id
                else "no such segment (this job has no segments)")
        for field in ("text", "source_text"):
            value = getattr(edit, field)
            if value is not None and CONTROL.search(value):
                bad(edit.id, field, "contains control characters")
        for field in ("start", "end"):
            value = getattr(edit, field)
            if value is not None and not math.isfinite(value):
                bad(edit.id, field, "must be a finite number of seconds")
        if edit.voice is not None and edit.voice not in voices:
            bad(edit.id, "voice", f"unknown voice for {job.target_lang}; one of: {', '.join(voices) or 'none'}")
    if problems:
        raise Invalid(problems)

    proposed = {s["id"]: dict(s) for s in translation["segments"]}
    changed: list[int] = []
    for edit in edits:
        seg = proposed[edit.id]
        before = dict(seg)
        given = edit.model_fields_set
        for field in ("text", "source_text"):
            value = getattr(edit, field)
            if value is not None:
                seg[field] = value.strip()
        for field in ("start", "end"):
            value = getattr(edit, field)
            if value is not None:
                seg[field] = round(float(value), 3)
        if "voice" in given:
            seg["voice"] = edit.voice
        if seg != before:
            changed.append(edit.id)

    ordered = [proposed[s["id"]] for s in translation["segments"]]
    for i, seg in enumerate(ordered):
        if seg["id"] not in changed:
            continue
        if seg["start"] < 0:
            bad(seg["id"], "start", "must not be negative")
        if seg["end"] > duration + 1e-3:
            bad(seg["id"], "end", f"must not be after the end of the media ({duration:.2f} s)")
        if seg["end"] - seg["start"] < MIN_DURATION_S:
            bad(seg["id"], "end", f"must be at least {MIN_DURATION_S} s after start")
        if i > 0 and seg["start"] < ordered[i - 1]["end"] - 1e-6:
            bad(seg["id"], "start", f"overlaps segment {ordered[i - 1]['id']} (which ends at "
                                    f"{ordered[i - 1]['end']:.2f} s)")
        if i + 1 < len(ordered) and seg["end"] > ordered[i + 1]["start"] + 1e-6:
            bad(seg["id"], "end", f"overlaps segment {ordered[i + 1]['id']} (which starts at "
                                  f"{ordered[i + 1]['start']:.2f} s)")
    if problems:
        raise Invalid(problems)

    source_by_id = {s["id"]: s for s in transcript["segments"]}
    for seg_id in changed:
        new = proposed[seg_id]
        old = by_id[seg_id]
        old.setdefault("original_text", old["text"])
        old.setdefault("original_source_text", old["source_text"])
        old.update({k: new[k] for k in ("text", "source_text", "start", "end")}, edited=True)
        if new.get("voice"):
            old["voice"] = new["voice"]
        else:
            old.pop("voice", None)
        src = source_by_id.get(seg_id)
        if src is not None:  # the source-language subtitles come from the transcript
            src.update(text=new["source_text"], start=new["start"], end=new["end"], edited=True)
    return changed


@router.get("/{job_id}/segments")
async def get_segments(job_id: str, request: Request, user: User = Depends(current_user)):
    """The job's segments: timing, source text, translated text and voice, with the edit revision."""
    job = await get_owned(request, job_id, user)
    require_artifacts(job)

    def read():
        state = job_activity(job)
        translation, _, source = read_segments(job)
        return segments_view(job, state, translation, source)

    return await run_in_threadpool(read)


@router.put("/{job_id}/segments")
async def put_segments(job_id: str, body: SegmentsEdit, request: Request, user: User = Depends(current_user)):
    """Save edited segments (only the changed ones need to be sent). 422 names each bad segment and field;
    409 when a run is in progress or `revision` is not the job's current one (someone else saved first)."""
    job = await get_owned(request, job_id, user)
    require_artifacts(job)

    def save():
        with _SAVE_LOCK:
            current = job_store().get_job(job.id)
            state = job_activity(current)
            if state in ACTIVE:
                raise HTTPException(409, f"the job is {state}: edit its segments when the run has ended")
            if body.revision is not None and body.revision != current.edit_revision:
                raise HTTPException(409, f"the segments were changed since you loaded them (revision "
                                         f"{current.edit_revision}, you sent {body.revision}); reload and edit again")
            translation, transcript, source = read_segments(current)
            changed = apply_edits(current, translation, transcript, source["duration_s"], body.segments,
                                  tts().voices_for(current.target_lang))
            if changed:
                if job_store().bump_revision(current.id, current.edit_revision) is None:
                    raise HTTPException(409, "the segments were changed by another save just now; reload and "
                                             "edit again")
                st = storage()
                storage_call(st.write_json, current.id, "transcript.json", transcript)
                storage_call(st.write_json, current.id, "translation.json", translation)
                current = job_store().get_job(current.id)
            return changed, segments_view(current, state, translation, source)

    try:
        changed, view = await run_in_threadpool(save)
    except Invalid as exc:
        return JSONResponse({"detail": str(exc), "problems": exc.problems}, status_code=422)
    logs.audit("segments_edited", segments=len(changed), revision=view["revision"])
    return view


@router.post("/{job_id}/redub", status_code=202)
async def redub(job_id: str, request: Request, user: User = Depends(current_user)):
    """Dub the job again from the speech stage, keeping its transcript and translation as edited: queues one
    run (dubbed_speech -> dubbed_mix -> dubbed_video) per edit revision; asking again for the same revision
    queues nothing new. Only segments whose text, voice or engine changed are synthesised again."""
    job = await get_owned(request, job_id, user)
    require_artifacts(job)

    def queue():
        current = job_store().get_job(job.id)
        state = job_activity(current)
        if state in ACTIVE:
            raise HTTPException(409, f"the job is {state}: re-dub it when the run has ended")
        read_segments(current)  # 409 without a translation
        key = f"redub:{current.id}:{current.edit_revision}"
        claim_launch(current.id)
        request_, queued = job_store().add_run_request(
            current.id, kind="redub", stages=REDUB_STAGES, key=key, requested_by=user.id,
            reason=f"segment edits (revision {current.edit_revision})")
        return {"job_id": current.id, "request_key": request_.key, "revision": current.edit_revision,
                "queued": queued}

    result = await run_in_threadpool(queue)
    logs.audit("job_redub_requested", request_key=result["request_key"], queued=result["queued"])
    return result
