"""`dubbing`: the command line.

    dubbing init                         set up the local instance, data folder and job store
                                         (and a first admin when there is none)
    dubbing user add NAME [--admin] [--password-stdin]
    dubbing token create NAME            a personal API token (alone on the last line)
    dubbing dub INPUT --to es [--from en] [--out DIR] [--voice V] [--tts E] [--container auto|mkv|mp4]
                 [--fit review|extend_video|cut]

`dub` runs the dub job for one local file through Dagster (a real instance: DAGSTER_HOME, or the
embedded default under var/), shows a progress bar per stage, and prints the output paths. A dub that a
blocking quality check stopped prints each failed check in one line and where the unpublished dub is
kept, and exits 3.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from pathlib import Path

LANG_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")
PROGRESS_RE = re.compile(r"^progress (\d+)/(\d+) ?(.*)$")


class CliError(Exception):
    """A one-line reason for a non-zero exit."""


NEEDS_REVIEW_EXIT = 3  # the dub was made but a blocking quality check stopped it from being published


def review_lines(result) -> list[str]:
    """One line per blocking quality check that failed in an in-process run (empty when none did)."""
    lines = []
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            ev = event.event_specific_data
            if not ev.passed and ev.blocking and ev.severity.value == "ERROR":
                lines.append(f"{ev.check_name}: {ev.description or 'failed'}")
    return lines


def _init(quiet: bool = False, first_admin: bool = False) -> None:
    from resources import media, settings
    from resources.jobstore import JobStore

    home = settings.ensure_dagster_home()
    data = settings.data_dir()
    data.mkdir(parents=True, exist_ok=True)
    JobStore().engine()  # creates/migrates the job store
    media.require_tools()
    if not quiet:
        print(f"DAGSTER_HOME={home}\nDUBBING_DATA_DIR={data}\njob store: {_safe_url(settings.database_url())}")
    if first_admin:
        from resources.accounts import Accounts

        created = Accounts().ensure_first_admin()
        if created:
            name, password = created
            print(f"created the first admin. Log in as: {name}\n  password (shown once, change it by "
                  f"adding a new admin): {password}")


def user_add(args: argparse.Namespace) -> int:
    import getpass

    from resources.accounts import AccountError, Accounts

    _init(quiet=True)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise CliError("the passwords differ")
    try:
        user = Accounts().add_user(args.name, password, role="admin" if args.admin else "user")
    except AccountError as exc:
        raise CliError(str(exc)) from None
    from resources import logs

    logs.setup()
    logs.user_id.set(user.id)
    logs.audit("user_added", role=user.role, via="cli")
    print(f"added {user.role} {user.name} ({user.id})")
    return 0


def token_create(args: argparse.Namespace) -> int:
    from resources.accounts import Accounts

    _init(quiet=True)
    accounts = Accounts()
    user = accounts.user_by_name(args.name)
    if user is None:
        raise CliError(f"no user {args.name}; add one with: dubbing user add {args.name}")
    token = accounts.create_token(user, args.label)
    from resources import logs

    logs.setup()
    logs.user_id.set(user.id)
    logs.audit("token_created", token_name=args.label, via="cli")
    print(f"API token for {user.name} (shown once; send it as 'Authorization: Bearer <token>'):")
    print(token)
    return 0


def _safe_url(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


class StageProgress:
    """Polls the run's event log and draws one tqdm bar per stage."""

    def __init__(self, instance, run_id: str, stages: list[str], stream=sys.stderr):
        self.instance, self.run_id, self.stages, self.stream = instance, run_id, stages, stream
        self.cursor = None
        self.bars: dict[str, object] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)
        self._poll()
        for bar in self.bars.values():
            bar.close()

    def _bar(self, step: str):
        from tqdm import tqdm

        if step not in self.bars:
            for other in self.bars.values():  # stages run one after another: one live bar
                other.close()
            n = self.stages.index(step) + 1 if step in self.stages else 0
            self.bars[step] = tqdm(total=1, desc=f"[{n}/{len(self.stages)}] {step:<15}", file=self.stream,
                                   bar_format="{desc} {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt} "
                                              "{postfix} [{elapsed}]", leave=True, dynamic_ncols=False)
        return self.bars[step]

    def _loop(self):
        while not self.stop.is_set():
            self._poll()
            self.stop.wait(0.3)

    def _poll(self):
        try:
            conn = self.instance.get_records_for_run(self.run_id, cursor=self.cursor, limit=500)
        except Exception:
            return
        self.cursor = conn.cursor
        for record in conn.records:
            entry = record.event_log_entry
            step = entry.step_key
            if not step:
                continue
            event = entry.dagster_event
            kind = event.event_type_value if event else None
            if kind == "STEP_START":
                self._bar(step).set_postfix_str("running")
            elif kind == "STEP_SUCCESS":
                bar = self._bar(step)
                bar.n = bar.total
                bar.set_postfix_str("done")
                bar.close()
            elif kind == "STEP_FAILURE":
                bar = self._bar(step)
                bar.set_postfix_str("FAILED")
                bar.close()
            elif event is None:
                m = PROGRESS_RE.match(entry.user_message or "")
                if m:
                    bar = self._bar(step)
                    bar.total = max(1, int(m.group(2)))
                    bar.n = min(int(m.group(1)), bar.total)
                    bar.unit = m.group(3)
                    bar.refresh()


def failure_reason(result) -> str:
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            if data.user_failure_data and data.user_failure_data.description:
                return data.user_failure_data.description
            if data.error:
                return f"{event.step_key}: {data.error.message.strip().splitlines()[-1]}"
    return "the run failed (see the Dagster UI for its log)"


def dub(args: argparse.Namespace) -> int:
    src = Path(args.input).expanduser()
    if not src.is_file():
        raise CliError(f"input file not found: {args.input}")
    for flag, value in (("--to", args.to), ("--from", args.source)):
        if not LANG_RE.match(value):
            raise CliError(f"{flag} {value!r} is not a language code like 'es' or 'pt-BR'")
    options = {"container": args.container, "fit": args.fit}
    if args.tts:
        options["tts_engine"] = args.tts
    if args.translator:
        options["translator"] = args.translator

    _init(quiet=True)
    from resources import disk, readiness

    reason = readiness.job_unready_reason(args.source, args.to, args.voice, options)
    if reason:  # the same check as job creation over the API: refused before a run starts
        raise CliError(reason)
    try:
        disk.ensure_free_space(action="a new job")
    except disk.DiskSpaceError as exc:
        raise CliError(exc.message) from None
    import dagster as dg
    from dagster._core.utils import make_new_run_id

    from dubbing_assets.definitions import defs
    from dubbing_assets.jobs import STAGES
    from dubbing_assets.partitions import dub_jobs
    from resources.jobstore import JobStore
    from resources.storage import MediaStorage

    store = JobStore()
    job = store.create_job(input_path=str(src.resolve()), filename=src.name, source_lang=args.source,
                           target_lang=args.to, voice=args.voice, owner=None, options=options)
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(dub_jobs.name, [job.id])
    run_id = make_new_run_id()
    print(f"job {job.id}: {src.name} {args.source} -> {args.to} (run {run_id})", file=sys.stderr)
    started = time.perf_counter()
    with StageProgress(instance, run_id, STAGES):
        result = defs.resolve_job_def("dub_job").execute_in_process(
            instance=instance, partition_key=job.id, run_id=run_id, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            tags={"dubbing/job_id": job.id, "dubbing/origin": "cli"},
        )
    storage = MediaStorage()
    if not result.success:
        review = review_lines(result)
        if not review:
            raise CliError(failure_reason(result))
        for line in review:  # one line per failed check, then where the unpublished work is
            print(f"dubbing: needs review: {line}", file=sys.stderr)
        stopped = {e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"}
        kept = (storage.artifact_location(job.id, "export") if "dubbed_video" in stopped
                else storage.artifact_location(job.id, "dub_track.wav"))
        print(f"dubbing: not published; the unpublished {'outputs are' if 'dubbed_video' in stopped else 'dub is'} "
              f"kept in {kept} (job {job.id}). Publish it from the web UI or POST /api/jobs/{job.id}/publish, or "
              f"run again with --fit extend_video or --fit cut", file=sys.stderr)
        return NEEDS_REVIEW_EXIT
    names = [o.name for o in storage.outputs(job.id)]
    if args.out:  # copied (local) or downloaded (S3) there
        dest = Path(args.out).expanduser()
        dest.mkdir(parents=True, exist_ok=True)
        outputs = [str(storage.copy_output(job.id, name, dest / name).resolve()) for name in names]
    else:
        outputs = [storage.output_location(job.id, name) for name in names]
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    for location in outputs:
        print(location)  # a local path, or an s3:// URL
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dubbing", description="Self-hosted video dubbing on Dagster.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="set up the local Dagster instance, data folder and job store")
    p_init.add_argument("--first-admin", action="store_true", help="create an admin when there is none")
    p_user = sub.add_parser("user", help="manage users").add_subparsers(dest="user_command", required=True)
    p_add = p_user.add_parser("add", help="add a user")
    p_add.add_argument("name")
    p_add.add_argument("--admin", action="store_true")
    p_add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p_token = sub.add_parser("token", help="personal API tokens").add_subparsers(dest="token_command",
                                                                                 required=True)
    p_create = p_token.add_parser("create", help="create an API token for a user")
    p_create.add_argument("name", help="user name")
    p_create.add_argument("--label", default="cli", help="what the token is for")
    p = sub.add_parser("dub", help="dub one local video or audio file")
    p.add_argument("input", help="video or audio file")
    p.add_argument("--to", required=True, help="target language, e.g. es")
    p.add_argument("--from", dest="source", default="en", help="source language (default en)")
    p.add_argument("--out", help="copy the outputs into this folder")
    p.add_argument("--voice", help="voice, e.g. espeak:es or piper:en_US-joe-medium")
    p.add_argument("--tts", choices=["auto", "espeak", "piper", "xtts"], help="TTS engine")
    p.add_argument("--translator", choices=["auto", "apertium", "argos", "libretranslate", "passthrough"])
    p.add_argument("--container", choices=["auto", "mkv", "mp4"], default="auto",
                   help="auto (default): MKV, or MP4 for a rotated (portrait phone) video, which MP4 keeps "
                        "without encoding the picture again")
    p.add_argument("--fit", choices=["review", "extend_video", "cut"], default="review",
                   help="speech that does not fit its slot even sped up: review (default: not published, exit 3), "
                        "extend_video (the picture is held so every word fits), cut (cut, with a warning)")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            _init(first_admin=args.first_admin)
            return 0
        if args.command == "user":
            return user_add(args)
        if args.command == "token":
            return token_create(args)
        return dub(args)
    except CliError as exc:
        print(f"dubbing: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dubbing: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
