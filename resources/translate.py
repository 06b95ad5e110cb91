"""Machine translation behind one small interface (`Translator.translate`), with small backends:
apertium (offline, Debian), argostranslate (when its language packages are installed),
LibreTranslate over HTTP, and passthrough when source and target languages match."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from typing import Protocol

import dagster as dg

from resources import versions

APERTIUM_MODES_DIR = Path("/usr/share/apertium/modes")
# ISO 639-1 -> apertium's ISO 639-3 mode codes.
APERTIUM_CODES = {
    "en": "eng", "es": "spa", "fr": "fra", "ca": "cat", "pt": "por", "it": "ita", "de": "deu",
    "gl": "glg", "eu": "eus", "oc": "oci", "ro": "ron", "nl": "nld", "sv": "swe", "da": "dan",
    "nb": "nob", "nn": "nno", "eo": "epo", "cy": "cym", "br": "bre", "ar": "ara",
}


class TranslationError(RuntimeError):
    pass


class Translator(Protocol):
    name: str

    def translate(self, texts: list[str], source: str, target: str) -> list[str]: ...

    def version(self) -> str:
        """The engine's installed version (resources/versions.py)."""
        ...

    def model(self, source: str, target: str) -> str | None:
        """The language pair (with its data's version where there is one) this backend translates with."""
        ...


def _base(lang: str) -> str:
    return lang.split("-")[0].lower()


class Passthrough:
    name = "passthrough"

    def translate(self, texts, source, target):
        return list(texts)

    def version(self) -> str:
        return "1"

    def model(self, source, target):
        return None


class Apertium:
    name = "apertium"

    @staticmethod
    def mode(source: str, target: str) -> str | None:
        s, t = APERTIUM_CODES.get(_base(source)), APERTIUM_CODES.get(_base(target))
        if not s or not t:
            return None
        return f"{s}-{t}"

    @classmethod
    def installed_modes(cls) -> list[str]:
        if shutil.which("apertium") is None or not APERTIUM_MODES_DIR.is_dir():
            return []
        return sorted(p.stem for p in APERTIUM_MODES_DIR.glob("*.mode"))

    @classmethod
    def supports(cls, source: str, target: str) -> bool:
        mode = cls.mode(source, target)
        return mode is not None and mode in cls.installed_modes()

    def translate(self, texts, source, target):
        mode = self.mode(source, target)
        installed = ", ".join(self.installed_modes()) or "none"
        if mode is None:
            raise TranslationError(f"apertium has no language codes for {source}->{target} (installed: {installed})")
        if mode not in self.installed_modes():
            raise TranslationError(
                f"apertium has no {source}->{target} pair installed (installed: {installed}); "
                f"install the Debian package that provides the {mode} mode (e.g. apertium-{mode})"
            )
        if not texts:
            return []
        lines = [" ".join(t.split()) for t in texts]  # one segment per line, no inner newlines
        out = self._run(mode, lines)
        if len(out) != len(lines):  # should not happen; never misalign segments
            out = [self._run(mode, [ln])[0] if ln else "" for ln in lines]
        return [self._clean(o) for o in out]

    @staticmethod
    def _run(mode: str, lines: list[str]) -> list[str]:
        proc = subprocess.run(
            ["apertium", "-u", mode], input="\n".join(lines) + "\n", capture_output=True,
            text=True, timeout=600,
        )
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise TranslationError(f"apertium {mode} failed (exit {proc.returncode}): {tail}")
        return proc.stdout.rstrip("\n").split("\n") if lines else []

    @staticmethod
    def _clean(text: str) -> str:
        # '#' marks a word apertium could not generate, '@' one it could not transfer.
        return " ".join(w.lstrip("#@") for w in text.split())

    def version(self) -> str:
        return versions.dpkg_version("apertium") or versions.UNKNOWN

    def model(self, source, target):
        """The mode and the version of the Debian package that installed it, e.g. eng-spa@0.8.1-2."""
        mode = self.mode(source, target)
        if mode is None:
            return None
        package = versions.dpkg_owner(str(APERTIUM_MODES_DIR / f"{mode}.mode"))
        return f"{mode}@{(versions.dpkg_version(package) if package else None) or versions.UNKNOWN}"


class Argos:
    name = "argos"

    @staticmethod
    def installed() -> bool:
        return importlib.util.find_spec("argostranslate") is not None

    @classmethod
    def supports(cls, source: str, target: str) -> bool:
        if not cls.installed():
            return False
        try:
            import argostranslate.translate as at  # loads no model until translate()

            langs = {lang.code: lang for lang in at.get_installed_languages()}
            src, tgt = langs.get(_base(source)), langs.get(_base(target))
            return bool(src and tgt and src.get_translation(tgt))
        except Exception:
            return False

    def translate(self, texts, source, target):
        if not self.supports(source, target):
            raise TranslationError(
                f"argostranslate has no installed {source}->{target} package; install one with "
                "argospm (needs egress) or use another backend"
            )
        import argostranslate.translate as at

        return [at.translate(t, _base(source), _base(target)) for t in texts]

    def version(self) -> str:
        return versions.package_version("argostranslate") or versions.UNKNOWN

    def model(self, source, target):
        """The pair and its installed language package's version (read from disk, never downloaded)."""
        pair = f"{_base(source)}-{_base(target)}"
        try:
            import argostranslate.package as ap

            for pkg in ap.get_installed_packages():
                if (pkg.from_code, pkg.to_code) == (_base(source), _base(target)):
                    return f"{pair}@{getattr(pkg, 'package_version', None) or versions.UNKNOWN}"
        except Exception:
            pass
        return pair


class LibreTranslate:
    name = "libretranslate"

    def __init__(self, url: str, api_key: str = "", timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def translate(self, texts, source, target):
        if not texts:
            return []
        body = {"q": list(texts), "source": _base(source), "target": _base(target), "format": "text"}
        if self.api_key:
            body["api_key"] = self.api_key
        import httpx  # here, not at import: every run worker imports this module (httpx costs ~0.5 s)

        try:
            resp = httpx.post(f"{self.url}/translate", json=body, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise TranslationError(f"LibreTranslate is unreachable: {type(exc).__name__}") from None
        if resp.status_code != 200:
            try:
                reason = resp.json().get("error", "")
            except ValueError:
                reason = ""
            raise TranslationError(f"LibreTranslate answered {resp.status_code}: {reason[:200]}")
        out = resp.json().get("translatedText")
        if isinstance(out, str):
            out = [out]
        if not isinstance(out, list) or len(out) != len(texts):
            raise TranslationError("LibreTranslate returned a different number of segments")
        return [str(o) for o in out]

    def version(self) -> str:
        return "remote"  # a server's version is not ours to see; the rule never reprocesses for it

    def model(self, source, target):
        return f"{_base(source)}-{_base(target)}"


class TranslatorResource(dg.ConfigurableResource):
    """Chooses the translation backend. backend=auto picks passthrough for same-language jobs,
    then apertium, then argostranslate, then LibreTranslate when a URL is configured."""

    backend: str = "auto"
    libretranslate_url: str = ""
    libretranslate_api_key: str = ""

    def choose(self, source: str, target: str, requested: str = "auto") -> Translator:
        # the same decision the readiness checks make when a job is created (resources/readiness.py)
        from resources.readiness import translation_plan

        plan = translation_plan(source, target, requested, default=self.backend,
                                lt_url=self.libretranslate_url)
        if not plan.ok:
            raise TranslationError(plan.reason)
        if plan.backend == "passthrough":
            return Passthrough()
        if plan.backend == "apertium":
            return Apertium()
        if plan.backend == "argos":
            return Argos()
        return LibreTranslate(self.libretranslate_url, self.libretranslate_api_key)

    def version_tag(self, source: str, target: str, requested: str = "auto") -> str:
        """The tag a translation made now would record (TranslationError when no backend can translate)."""
        return version_metadata(self.choose(source, target, requested), source, target)["version_tag"]


def version_metadata(backend: Translator, source: str, target: str) -> dict[str, str]:
    """engine (the backend), engine_version, model (the pair) and version_tag, for the translation's metadata."""
    return versions.version_metadata(backend.name, backend.version(), backend.model(source, target))
