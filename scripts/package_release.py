#!/usr/bin/env python3
"""Builds a release of dubbing-platform: sdist + wheel, SHA256SUMS over them, minisign signatures.

    .venv/bin/python scripts/package_release.py                  # build from HEAD into dist/, sign if a key is set
    .venv/bin/python scripts/package_release.py --worktree       # build the working tree as it is
    .venv/bin/python scripts/package_release.py --no-sign --include sbom.cdx.json   # CI: build, sign later
    .venv/bin/python scripts/package_release.py --sign-only      # sign what dist/ holds (checks SHA256SUMS first)
    .venv/bin/python scripts/package_release.py --verify minisign.pub              # check dist/ like a user would
    .venv/bin/python scripts/package_release.py --generate-key ~/keys              # a new minisign key pair

Signing key (minisign format, as `minisign -G` or --generate-key writes it), from the environment:
    RELEASE_SIGNING_KEY_FILE      path to the secret key file, or
    RELEASE_SIGNING_KEY           the secret key file's contents (for CI secrets)
    RELEASE_SIGNING_KEY_PASSWORD  its password (unset for a key without one)
With neither key variable set, the release is built and checksummed, and this line is printed:
    skipped: signing key not configured
The key and the password are never printed, and never passed to the build.

Each artifact gets <artifact>.minisig and SHA256SUMS gets SHA256SUMS.minisig; verify with
`minisign -Vm FILE -p minisign.pub` and `sha256sum -c SHA256SUMS` (see docs/release.md).
Exit status: 0 done, 1 failed (the message says what to do), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_LINE = "skipped: signing key not configured"
SUMS = "SHA256SUMS"
SIG_EXT = ".minisig"
KEY_ENV, KEY_FILE_ENV, PASSWORD_ENV = "RELEASE_SIGNING_KEY", "RELEASE_SIGNING_KEY_FILE", "RELEASE_SIGNING_KEY_PASSWORD"
SECRET_ENVS = (KEY_ENV, KEY_FILE_ENV, PASSWORD_ENV)
# A committed public key (if there is one) that every signature must verify against.
PUBLIC_KEY_FILE = ROOT / "minisign.pub"
DOCS = "docs/release.md"


class ReleaseError(Exception):
    """A failure with a message that says what to do; never contains key material."""


def say(msg: str = "") -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------- build


def project_meta(source: Path) -> tuple[str, str]:
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    return project["name"], project["version"]


def git(*args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReleaseError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def export_source(dest: Path, worktree: bool) -> tuple[str, int | None]:
    """Copies the source to build into dest; returns a description and the commit time (if any)."""
    if shutil.which("git") is None or subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True
    ).returncode != 0:
        raise ReleaseError(
            f"{ROOT} is not a git checkout (or git is not installed): build from a clone of the repository"
        )
    if worktree:
        files = [f for f in git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0") if f]
        for rel in files:
            src = ROOT / rel
            if src.is_file():  # tracked files deleted in the work tree are left out
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
        return f"the working tree ({len(files)} files, uncommitted changes included)", None
    head = git("rev-parse", "--short", "HEAD").strip()
    epoch = int(git("log", "-1", "--format=%ct", "HEAD").strip())
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        raise ReleaseError(f"git archive HEAD failed: {archive.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    dirty = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    if dirty:
        say(f"  note: {len(dirty)} file(s) have uncommitted changes; they are not in this release "
            "(pass --worktree to build them)")
    return f"HEAD {head} (git archive)", epoch


def check_build_tools() -> None:
    missing = [m for m in ("build", "setuptools") if importlib.util.find_spec(m) is None]
    if missing:
        raise ReleaseError(
            f"{' and '.join(missing)} not installed in {sys.executable}: run `make setup` "
            "(both are in the dev extra) or `pip install build setuptools`"
        )


@contextlib.contextmanager
def heartbeat(what: str, every: float = 15.0):
    """Prints a line every `every` seconds while the block runs, so long work shows progress."""
    start, done = time.monotonic(), threading.Event()

    def beat() -> None:
        while not done.wait(every):
            say(f"  ... still {what} ({time.monotonic() - start:.0f} s)")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def clean_env() -> dict[str, str]:
    """The environment for child processes: without the signing key or its password."""
    return {k: v for k, v in os.environ.items() if k not in SECRET_ENVS}


def build(source: Path, outdir: Path, epoch: int | None) -> list[Path]:
    env = clean_env()
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(epoch)  # wheel timestamps from the commit, not from now
    # --no-isolation: build with the pinned setuptools from requirements.lock, no download at build time.
    cmd = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir), str(source)]
    with heartbeat("building"):
        proc = subprocess.run(cmd, cwd=source, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise ReleaseError(f"python -m build failed (exit {proc.returncode}); its last lines:\n{tail}\n"
                           "fix the packaging error above (pyproject.toml) and run again")
    artifacts = sorted(p for p in outdir.iterdir() if p.name.endswith((".tar.gz", ".whl")))
    kinds = {p.name.endswith(".whl") for p in artifacts}
    if kinds != {True, False}:
        raise ReleaseError(f"python -m build made {[p.name for p in artifacts]}, not an sdist and a wheel")
    return artifacts


# ------------------------------------------------------------------------------------------ checksums


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_sums(outdir: Path, names: list[str]) -> Path:
    # The format of `sha256sum` (two spaces: text mode), so `sha256sum -c SHA256SUMS` checks it.
    sums = outdir / SUMS
    sums.write_text("".join(f"{sha256(outdir / n)}  {n}\n" for n in sorted(names)))
    return sums


def read_sums(outdir: Path) -> dict[str, str]:
    sums = outdir / SUMS
    if not sums.is_file():
        raise ReleaseError(f"{sums} not found: build the release first (scripts/package_release.py)")
    entries: dict[str, str] = {}
    for n, line in enumerate(sums.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or "/" in name:
            raise ReleaseError(f"{sums}:{n} is not a `sha256sum` line: rebuild the release")
        entries[name.lstrip("*")] = digest
    return entries


def check_sums(outdir: Path) -> dict[str, str]:
    entries = read_sums(outdir)
    bad = [n for n, d in entries.items() if not (outdir / n).is_file() or sha256(outdir / n) != d]
    if bad:
        raise ReleaseError(f"checksum mismatch or missing file in {outdir}: {', '.join(bad)} "
                           "(the artifacts changed after SHA256SUMS was written: rebuild the release)")
    return entries


# -------------------------------------------------------------------------------------------- signing


def _minisign():
    try:
        import minisign
    except ImportError:
        raise ReleaseError("py-minisign is not installed: run `make setup` (it is in the dev extra) "
                           "or `pip install py-minisign`") from None
    return minisign


def key_configured() -> bool:
    return bool(os.environ.get(KEY_ENV, "").strip() or os.environ.get(KEY_FILE_ENV, "").strip())


def load_secret_key():
    """The decrypted secret key from the environment. Error messages never quote the key or password."""
    minisign = _minisign()
    if os.environ.get(KEY_ENV, "").strip():
        data, where = os.environ[KEY_ENV].strip().encode(), KEY_ENV
    else:
        path = Path(os.environ[KEY_FILE_ENV].strip()).expanduser()
        where = f"{KEY_FILE_ENV} ({path})"
        if not path.is_file():
            raise ReleaseError(f"{KEY_FILE_ENV} points to {path}, which does not exist: set it to your minisign "
                               f"secret key file, or unset it to build without signing ({DOCS})")
        data = path.read_bytes()
    try:
        key = minisign.SecretKey.from_bytes(data)
    except Exception:  # the library's messages could quote the input: use our own
        raise ReleaseError(f"{where} is not a minisign secret key (expected the two-line file that "
                           f"`minisign -G` or --generate-key writes; {DOCS})") from None
    password = os.environ.get(PASSWORD_ENV, "")
    if key.is_encrypted():
        if not password:
            key.wipe()
            raise ReleaseError(f"the signing key in {where} is password-protected: set {PASSWORD_ENV}")
        say("  decrypting the signing key (scrypt, takes a few seconds) ...")
        try:
            key.decrypt(password)
        except Exception:
            key.wipe()
            raise ReleaseError(f"wrong password for the signing key in {where}: check {PASSWORD_ENV}") from None
    return key


def check_committed_public_key(public_key) -> None:
    if not PUBLIC_KEY_FILE.is_file():
        return
    committed = _minisign().PublicKey.from_file(PUBLIC_KEY_FILE)
    if committed.to_base64() != public_key.to_base64():
        raise ReleaseError(f"the signing key does not belong to the committed {PUBLIC_KEY_FILE.name}: "
                           f"configure the matching secret key, or commit its public key ({DOCS})")


def sign(outdir: Path, release: str) -> list[Path]:
    """Signs every file listed in SHA256SUMS and SHA256SUMS itself; verifies each signature after."""
    entries = check_sums(outdir)
    names = [*sorted(entries), SUMS]
    key = load_secret_key()
    try:
        public_key = key.get_public_key()
        check_committed_public_key(public_key)
        sigs = []
        for i, name in enumerate(names, 1):
            say(f"  [{i}/{len(names)}] signing {name}")
            # prehash=True: the signature type `minisign -S` makes by default ("ED", BLAKE2b-512 prehash).
            comment = f"timestamp:{int(time.time())}\tfile:{name}\thashed\trelease:{release}"
            sig = key.sign_file(outdir / name, prehash=True, trusted_comment=comment)
            path = outdir / f"{name}{SIG_EXT}"
            path.write_bytes(bytes(sig) + b"\n")
            sigs.append(path)
    finally:
        key.wipe()
    for name in names:  # a signature that does not verify must never ship
        public_key.verify_file(outdir / name)
    say(f"  signed with minisign key {public_key.to_base64().decode()} (public key)")
    return sigs


def verify(outdir: Path, public_key_path: Path) -> None:
    minisign = _minisign()
    if not public_key_path.is_file():
        raise ReleaseError(f"public key {public_key_path} not found: pass the release's minisign.pub ({DOCS})")
    try:
        public_key = minisign.PublicKey.from_file(public_key_path)
    except Exception:
        raise ReleaseError(f"{public_key_path} is not a minisign public key") from None
    failures = []
    names = [SUMS, *sorted(read_sums(outdir))]
    for name in names:
        sig = outdir / f"{name}{SIG_EXT}"
        try:
            if not sig.is_file():
                raise minisign.VerifyError("no signature file")
            public_key.verify_file(outdir / name, minisign.Signature.from_file(sig))
            say(f"  signature OK: {name}")
        except (minisign.Error, OSError) as exc:
            failures.append(f"{name}: {exc}")
            say(f"  signature FAILED: {name}: {exc}")
    try:
        check_sums(outdir)
        say(f"  {SUMS} OK: every artifact matches its checksum")
    except ReleaseError as exc:
        failures.append(str(exc))
        say(f"  {exc}")
    if failures:
        raise ReleaseError(f"{len(failures)} check(s) failed: do not install this release")


def generate_key(dest: Path) -> None:
    minisign = _minisign()
    dest.mkdir(parents=True, exist_ok=True)
    secret_path, public_path = dest / "minisign.key", dest / "minisign.pub"
    for p in (secret_path, public_path):
        if p.exists():
            raise ReleaseError(f"{p} exists: choose another folder (a key is never overwritten)")
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        if not sys.stdin.isatty():
            raise ReleaseError(f"set {PASSWORD_ENV} (or run in a terminal to be asked) for the new key's password")
        password = getpass.getpass("password for the new key: ")
        if password != getpass.getpass("again: "):
            raise ReleaseError("the two passwords differ: run again")
    pair = minisign.KeyPair.generate()
    with pair.secret_key as secret_key:
        if password:
            say("  encrypting the secret key (scrypt, takes a few seconds) ...")
            secret_key.encrypt(password)
        fd = os.open(secret_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(secret_key) + b"\n")
    public_path.write_bytes(bytes(pair.public_key) + b"\n")
    say(f"secret key: {secret_path} (mode 600{'' if password else ', no password'}; keep it out of git)")
    say(f"public key: {public_path} (publish it: commit it as minisign.pub at the repository root)")
    say(f"GitHub: store the secret key file's contents as the secret MINISIGN_SECRET_KEY and its password as "
        f"MINISIGN_PASSWORD ({DOCS})")


# ----------------------------------------------------------------------------------------------- main


def prepare_outdir(outdir: Path, dist_name: str) -> None:
    """Removes the previous release's files from outdir (only those: anything else stays)."""
    outdir.mkdir(parents=True, exist_ok=True)
    prefix = dist_name.replace("-", "_")
    for p in outdir.iterdir():
        if p.is_file() and (p.name.startswith((SUMS, prefix)) or p.name.endswith(SIG_EXT)):
            p.unlink()


def do_build(args: argparse.Namespace) -> int:
    start = time.monotonic()
    outdir = args.out
    includes = [Path(p) for p in args.include]
    for p in includes:
        if not p.is_file():
            raise ReleaseError(f"--include {p}: no such file")
    check_build_tools()
    steps = 4
    with tempfile.TemporaryDirectory(prefix="release-") as tmp:
        src, built = Path(tmp) / "src", Path(tmp) / "dist"
        src.mkdir()
        say(f"[1/{steps}] exporting the source ...")
        what, epoch = export_source(src, args.worktree)
        name, version = project_meta(src)
        say(f"  {name} {version} from {what}")
        say(f"[2/{steps}] building sdist and wheel (python -m build, about 10-30 s) ...")
        t = time.monotonic()
        artifacts = build(src, built, epoch)
        say(f"  built {', '.join(p.name for p in artifacts)} in {time.monotonic() - t:.1f} s")
        prepare_outdir(outdir, name)
        names = []
        for p in [*artifacts, *includes]:
            if p.name in names:
                raise ReleaseError(f"two artifacts are named {p.name}: rename one --include")
            shutil.copy2(p, outdir / p.name)
            names.append(p.name)
    say(f"[3/{steps}] writing {SUMS} ...")
    sums = write_sums(outdir, names)
    for line in sums.read_text().splitlines():
        say(f"  {line}")
    release = f"{name} {version}"
    if args.no_sign:
        say(f"[4/{steps}] signing: not requested (--no-sign); sign later with --sign-only")
    elif key_configured():
        say(f"[4/{steps}] signing with minisign ...")
        sign(outdir, release)
    else:
        say(f"[4/{steps}] signing ...")
        say(SKIP_LINE)  # exactly this line, alone: CI logs and tests look for it
        say(f"  (set {KEY_FILE_ENV} or {KEY_ENV} to sign; {DOCS})")
    say(f"release in {outdir} ({time.monotonic() - start:.1f} s):")
    for p in sorted(outdir.iterdir()):
        if p.is_file():
            say(f"  {p.name}  {p.stat().st_size:,} bytes")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="release folder (default: dist/)")
    parser.add_argument("--worktree", action="store_true",
                        help="build the working tree (uncommitted changes included) instead of HEAD")
    parser.add_argument("--include", action="append", default=[], metavar="FILE",
                        help="another file to ship, checksum and sign (e.g. the SBOM); repeatable")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-sign", action="store_true", help="build and checksum only")
    mode.add_argument("--sign-only", action="store_true",
                      help="sign the release already in --out (a signing key must be configured)")
    mode.add_argument("--verify", type=Path, metavar="PUBKEY",
                      help="verify the release in --out against this minisign public key")
    mode.add_argument("--generate-key", type=Path, metavar="DIR",
                      help="write a new key pair minisign.key + minisign.pub into DIR "
                           f"(password from {PASSWORD_ENV}, or asked)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    try:
        if args.generate_key:
            generate_key(args.generate_key)
        elif args.verify:
            say(f"verifying the release in {args.out} with {args.verify} ...")
            verify(args.out, args.verify)
            say("release verified")
        elif args.sign_only:
            if not key_configured():
                raise ReleaseError(f"--sign-only needs a signing key: set {KEY_FILE_ENV} (a file) or {KEY_ENV} "
                                   f"(its contents), and {PASSWORD_ENV} if it has one ({DOCS})")
            entries = read_sums(args.out)
            name, version = project_meta(ROOT)
            say(f"signing the {len(entries)} artifact(s) in {args.out} and {SUMS} ...")
            sign(args.out, f"{name} {version}")
        else:
            return do_build(args)
    except ReleaseError as exc:
        print(f"package_release: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("package_release: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
