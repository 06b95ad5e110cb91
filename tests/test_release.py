"""Release hygiene: scripts/package_release.py without and with a signing key, the GitHub workflows
under actionlint, and ruff over the repository (test_ruff_clean)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import minisign
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "package_release.py"
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
SKIP_LINE = "skipped: signing key not configured"
PASSWORD = "correct horse battery staple 7f3a"

pytestmark = pytest.mark.timeout(600)


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed: run `make setup` (it is in the dev extra)")
        return found
    return str(path)


def run_release(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RELEASE_SIGNING_")}
    environ.update(env)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=environ,
                          timeout=600)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def artifacts(outdir: Path) -> list[Path]:
    return sorted(p for p in outdir.iterdir() if p.name.endswith((".whl", ".tar.gz")))


def new_key(folder: Path, password: str | None = PASSWORD) -> tuple[Path, Path]:
    """A throwaway minisign key pair, as `minisign -G` writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    pair = minisign.KeyPair.generate()
    secret, public = folder / "minisign.key", folder / "minisign.pub"
    with pair.secret_key as sk:
        if password:
            sk.encrypt(password)
        secret.write_bytes(bytes(sk) + b"\n")
    public.write_bytes(bytes(pair.public_key) + b"\n")
    return secret, public


def secret_line(secret: Path) -> str:
    return secret.read_text().splitlines()[1]


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory):
    """One release built without any key configured: (finished process, release folder)."""
    out = tmp_path_factory.mktemp("unsigned") / "dist"
    proc = run_release("--out", str(out))
    return proc, out


# ----------------------------------------------------------------------------------- without a key


def test_release_without_key_builds_checksums_and_says_it_skipped_signing(unsigned):
    proc, out = unsigned
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert SKIP_LINE in proc.stdout.splitlines(), proc.stdout  # the exact line, alone
    # progress for the long part, in order
    steps = [line.split("]")[0] + "]" for line in proc.stdout.splitlines() if re.match(r"^\[\d/4\]", line)]
    assert steps == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]

    built = artifacts(out)
    assert [p.name for p in built] == ["dubbing_platform-0.1.0-py3-none-any.whl", "dubbing_platform-0.1.0.tar.gz"]
    assert not list(out.glob("*.minisig"))
    # SHA256SUMS in `sha256sum` format, one line per artifact, every hash right
    lines = (out / "SHA256SUMS").read_text().splitlines()
    assert lines == [f"{sha256(p)}  {p.name}" for p in built]
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr

    # a usable release: the wheel carries the package data the services load at run time
    with zipfile.ZipFile(built[0]) as whl:
        names = set(whl.namelist())
    for needed in ("dubbing_assets/definitions.py", "upload_api/templates/base.html", "upload_api/static/ui.css",
                   "resources/dagster_embedded.yaml", "resources/migrations/script.py.mako"):
        assert needed in names, needed
    with tarfile.open(built[1]) as sdist:
        assert "dubbing_platform-0.1.0/pyproject.toml" in sdist.getnames()


def test_sign_only_without_key_is_an_error_that_names_the_fix(unsigned, tmp_path):
    out = tmp_path / "dist"
    shutil.copytree(unsigned[1], out)
    proc = run_release("--out", str(out), "--sign-only")
    assert proc.returncode == 1
    assert "RELEASE_SIGNING_KEY_FILE" in proc.stderr and "docs/release.md" in proc.stderr


# -------------------------------------------------------------------------------------- with a key


def test_release_with_key_signs_and_the_signatures_verify(tmp_path):
    secret, public = new_key(tmp_path / "keys")
    out = tmp_path / "dist"
    sbom = tmp_path / "dubbing-platform.cdx.json"  # --include: shipped, checksummed and signed too
    sbom.write_text('{"bomFormat": "CycloneDX"}\n')
    proc = run_release("--out", str(out), "--include", str(sbom), RELEASE_SIGNING_KEY_FILE=str(secret),
                       RELEASE_SIGNING_KEY_PASSWORD=PASSWORD)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert SKIP_LINE not in proc.stdout
    printed = proc.stdout + proc.stderr
    assert PASSWORD not in printed and secret_line(secret) not in printed  # never the key or the password

    built = artifacts(out)
    assert len(built) == 2
    assert (out / sbom.name).read_bytes() == sbom.read_bytes()
    assert (out / "SHA256SUMS").read_text().splitlines() == [
        f"{sha256(p)}  {p.name}" for p in sorted([*built, out / sbom.name], key=lambda p: p.name)]
    signed = [*built, out / sbom.name, out / "SHA256SUMS"]
    assert sorted(p.name for p in out.glob("*.minisig")) == sorted(f"{p.name}.minisig" for p in signed)
    pk = minisign.PublicKey.from_file(public)
    for p in signed:
        pk.verify_file(p)  # raises on a bad signature
        assert f"file:{p.name}" in minisign.Signature.from_file(f"{p}.minisig").trusted_comment

    # the reference tool agrees, where it is installed (Debian's minisign)
    if shutil.which("minisign"):
        for p in signed:
            cli = subprocess.run(["minisign", "-Vm", str(p), "-p", str(public)], capture_output=True, text=True)
            assert cli.returncode == 0, cli.stderr

    # the script's own --verify, as a user without minisign runs it
    ok = run_release("--out", str(out), "--verify", str(public))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "release verified" in ok.stdout

    # a different key does not verify
    _, other_public = new_key(tmp_path / "other", password=None)
    wrong = run_release("--out", str(out), "--verify", str(other_public))
    assert wrong.returncode == 1 and "signature FAILED" in wrong.stdout

    # tampering with an artifact breaks its signature (and its checksum)
    wheel = built[0]
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    with pytest.raises(minisign.VerifyError):
        pk.verify_file(wheel)
    pk.verify_file(out / "SHA256SUMS")  # untouched files still verify
    bad = run_release("--out", str(out), "--verify", str(public))
    assert bad.returncode == 1
    assert f"signature FAILED: {wheel.name}" in bad.stdout
    assert "checksum mismatch" in bad.stdout and "do not install" in bad.stderr
    if shutil.which("minisign"):
        cli = subprocess.run(["minisign", "-Vm", str(wheel), "-p", str(public)], capture_output=True, text=True)
        assert cli.returncode != 0
        # and sha256sum -c flags it
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
        assert check.returncode != 0 and f"{wheel.name}: FAILED" in check.stdout


def test_sign_only_takes_the_key_contents_from_the_environment(unsigned, tmp_path):
    """The CI path: the build runs with --no-sign, then --sign-only with the secret's contents in env."""
    secret, public = new_key(tmp_path / "keys")
    out = tmp_path / "dist"
    shutil.copytree(unsigned[1], out)
    proc = run_release("--out", str(out), "--sign-only", RELEASE_SIGNING_KEY=secret.read_text(),
                       RELEASE_SIGNING_KEY_PASSWORD=PASSWORD)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr and secret_line(secret) not in proc.stdout + proc.stderr
    pk = minisign.PublicKey.from_file(public)
    for p in [*artifacts(out), out / "SHA256SUMS"]:
        pk.verify_file(p)


@pytest.mark.parametrize("case", ["wrong password", "no password", "missing file", "not a key"])
def test_key_errors_name_the_fix_and_never_print_secrets(unsigned, tmp_path, case):
    secret, _ = new_key(tmp_path / "keys")
    out = tmp_path / "dist"
    shutil.copytree(unsigned[1], out)
    env = {"RELEASE_SIGNING_KEY_FILE": str(secret), "RELEASE_SIGNING_KEY_PASSWORD": PASSWORD}
    if case == "wrong password":
        env["RELEASE_SIGNING_KEY_PASSWORD"] = "not-the-password-9c1e"
        expect = "wrong password"
    elif case == "no password":
        del env["RELEASE_SIGNING_KEY_PASSWORD"]
        expect = "set RELEASE_SIGNING_KEY_PASSWORD"
    elif case == "missing file":
        env["RELEASE_SIGNING_KEY_FILE"] = str(tmp_path / "nope.key")
        expect = "does not exist"
    else:
        junk = tmp_path / "junk.key"
        junk.write_text("untrusted comment: hello\nTHIS-IS-NOT-A-KEY-but-looks-secret\n")
        env["RELEASE_SIGNING_KEY_FILE"] = str(junk)
        expect = "is not a minisign secret key"
    proc = run_release("--out", str(out), "--sign-only", **env)
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 1, printed
    assert expect in proc.stderr, proc.stderr
    for secret_text in (PASSWORD, "not-the-password-9c1e", secret_line(secret), "THIS-IS-NOT-A-KEY"):
        assert secret_text not in printed
    assert not list(out.glob("*.minisig"))


def test_sign_only_refuses_artifacts_that_changed_after_the_checksums(unsigned, tmp_path):
    secret, _ = new_key(tmp_path / "keys", password=None)
    out = tmp_path / "dist"
    shutil.copytree(unsigned[1], out)
    with artifacts(out)[1].open("ab") as f:
        f.write(b"\0")
    proc = run_release("--out", str(out), "--sign-only", RELEASE_SIGNING_KEY_FILE=str(secret))
    assert proc.returncode == 1
    assert "checksum mismatch" in proc.stderr and "rebuild" in proc.stderr
    assert not list(out.glob("*.minisig"))


def test_generate_key_writes_a_usable_pair_and_never_prints_the_password(tmp_path):
    proc = run_release("--generate-key", str(tmp_path / "k"), RELEASE_SIGNING_KEY_PASSWORD=PASSWORD)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    secret, public = tmp_path / "k" / "minisign.key", tmp_path / "k" / "minisign.pub"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in proc.stdout + proc.stderr and secret_line(secret) not in proc.stdout + proc.stderr
    sk = minisign.SecretKey.from_file(secret)
    assert sk.is_encrypted()
    sk.decrypt(PASSWORD)
    (tmp_path / "f").write_bytes(b"data")
    sk.sign_file(tmp_path / "f", prehash=True, drop_signature=True)
    minisign.PublicKey.from_file(public).verify_file(tmp_path / "f")
    again = run_release("--generate-key", str(tmp_path / "k"), RELEASE_SIGNING_KEY_PASSWORD=PASSWORD)
    assert again.returncode == 1 and "exists" in again.stderr  # a key is never overwritten


def test_signing_refuses_a_key_other_than_the_committed_public_key(unsigned, tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("package_release", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    secret, public = new_key(tmp_path / "keys", password=None)
    _, committed = new_key(tmp_path / "committed", password=None)
    out = tmp_path / "dist"
    shutil.copytree(unsigned[1], out)
    monkeypatch.setenv("RELEASE_SIGNING_KEY_FILE", str(secret))
    monkeypatch.delenv("RELEASE_SIGNING_KEY", raising=False)
    monkeypatch.setattr(module, "PUBLIC_KEY_FILE", committed)
    with pytest.raises(module.ReleaseError, match="does not belong to the committed"):
        module.sign(out, "dubbing-platform test")
    assert not list(out.glob("*.minisig"))
    monkeypatch.setattr(module, "PUBLIC_KEY_FILE", public)  # the matching public key: signs
    module.sign(out, "dubbing-platform test")
    assert len(list(out.glob("*.minisig"))) == 3


# ------------------------------------------------------------------------------------ the workflows


def actionlint(*paths: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([tool("actionlint"), "-no-color", *map(str, paths)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_workflows_pass_actionlint():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {p.name for p in files} >= {"ci-core.yml", "ci-release.yml"}
    proc = actionlint(*files)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_actionlint_fails_on_a_broken_workflow(tmp_path):
    """Proves the check above can fail: a workflow with a typo'd key, an undefined step output and a bad
    cron must make actionlint report and exit non-zero."""
    wf = tmp_path / ".github" / "workflows"
    wf.mkdir(parents=True)
    (wf / "broken.yml").write_text(
        "on:\n"
        "  schedule:\n"
        "    - cron: '61 * * * *'\n"
        "jobs:\n"
        "  build:\n"
        "    runs-on: ubuntu-24.04\n"
        "    steps:\n"
        "      - run: echo hi\n"
        "        if: steps.nope.outputs.present == 'true'\n"
        "        shell: bash\n"
        "        timeout-minute: 5\n"
    )
    proc = actionlint(wf / "broken.yml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "broken.yml" in proc.stdout
    assert "cron" in proc.stdout and "timeout-minute" in proc.stdout


def _steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def test_release_workflow_signs_only_with_keys_and_never_interpolates_secrets():
    release = yaml.safe_load((WORKFLOWS / "ci-release.yml").read_text())
    steps = _steps(release["jobs"]["release"])
    runs = " ".join(s.get("run", "") for s in steps)
    for needed in ("cyclonedx-py", "pip-audit", "scripts/package_release.py --no-sign", "--sign-only"):
        assert needed in runs, needed
    keys = [s for s in steps if s.get("id") == "keys"]
    assert len(keys) == 1 and SKIP_LINE in keys[0]["run"]
    gated = [s for s in steps if "--sign-only" in s.get("run", "") or "attest" in s.get("uses", "")]
    assert len(gated) == 2
    assert all(s.get("if") == "steps.keys.outputs.present == 'true'" for s in gated)
    # build and scan are never gated on the keys
    assert all("if" not in s for s in steps if "package_release.py --no-sign" in s.get("run", "")
               or "pip-audit" in s.get("run", "") or "cyclonedx" in s.get("run", ""))
    for path in WORKFLOWS.glob("*.yml"):
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            for step in _steps(job):
                assert "secrets." not in step.get("run", ""), f"{path.name}: a secret interpolated into a script"


def test_core_workflow_lints_tests_on_postgres_and_runs_the_gates_nightly():
    core = yaml.safe_load((WORKFLOWS / "ci-core.yml").read_text())
    on = core[True] if True in core else core["on"]  # YAML 1.1 reads the key `on` as True
    assert on["schedule"][0]["cron"]
    jobs = core["jobs"]
    runs = {name: " ".join(s.get("run", "") for s in _steps(job)) for name, job in jobs.items()}
    assert "ruff check" in runs["lint"] and "actionlint" in runs["lint"]
    assert "make test" in runs["tests"]
    assert jobs["tests"]["services"]["postgres"]["image"] == "postgres:15"
    assert jobs["tests"]["env"]["DUBBING_TEST_PG_URL"].startswith("postgresql+psycopg2://")
    assert "make gates" in runs["gates"] and "schedule" in jobs["gates"]["if"]


# ----------------------------------------------------------------------------------------------- ruff


def test_ruff_clean():
    """`ruff check .` over the repository (config in pyproject.toml) finds nothing."""
    proc = subprocess.run([tool("ruff"), "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
