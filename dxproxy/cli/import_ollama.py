"""`dx import-ollama`: config entries that serve an Ollama store's GGUF blobs in place.

An Ollama store (reference/OLLAMA-API.md §7) is `manifests/<host>/<namespace>/<model>/<tag>`
(Docker-style JSON listing layers by media type) and `blobs/sha256-<hex>` (content-addressed
files). The model layer is a plain GGUF file, so llama.cpp can serve the blob where it is:
nothing is copied, converted or written into the store, and 50 GB of models stay 50 GB.

The params layer (Ollama's Modelfile PARAMETERs) becomes DX and llama-server settings where
there is one (num_ctx -> context, temperature -> --temp, ...); what has none is said in a
comment of the entry, as are the projector (-> --mmproj) and the layers DX does not use.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import click

MEDIA = "application/vnd.ollama.image."
MODEL = MEDIA + "model"
PARAMS = MEDIA + "params"
TEMPLATE = MEDIA + "template"
PROMPT = MEDIA + "prompt"  # the legacy name of the template layer
SYSTEM = MEDIA + "system"
PROJECTOR = MEDIA + "projector"
ADAPTER = MEDIA + "adapter"
LICENSE = MEDIA + "license"
MESSAGES = MEDIA + "messages"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"

# Ollama PARAMETERs -> llama-server flags. llama-server uses its command-line sampling
# settings as the defaults of every request, as Ollama uses a model's params.
LLAMA_SERVER_FLAGS = {
    "temperature": "--temp",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "typical_p": "--typical",
    "repeat_penalty": "--repeat-penalty",
    "repeat_last_n": "--repeat-last-n",
    "presence_penalty": "--presence-penalty",
    "frequency_penalty": "--frequency-penalty",
    "seed": "--seed",
    "num_predict": "--n-predict",
    "num_keep": "--keep",
    "num_batch": "--batch-size",
    "num_thread": "--threads",
}
# Params DX decides itself, with the reason said in the entry.
NOT_MAPPED = {
    "stop": "llama-server has no default stop strings; the model's own chat template and "
    "end-of-turn tokens end replies, and clients may send `stop`",
    "num_gpu": "DX puts all layers on the model's `gpus:` (none: CPU)",
    "main_gpu": "set the model's `gpus:` instead",
    "num_ctx": "",  # mapped to `context`, never reported
}


@dataclass(frozen=True, slots=True)
class OllamaModel:
    """One manifest of the store, as DX will serve it."""

    name: str  # the DX model name: name:tag, ns/name:tag, or host/ns/name:tag
    ref: str  # host/namespace/model:tag, as Ollama knows it
    manifest: Path
    gguf: Path | None = None
    size: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    projectors: tuple[Path, ...] = ()
    adapters: tuple[Path, ...] = ()
    unused: tuple[str, ...] = ()  # layers DX does not use (template, messages, ...)
    system: str = ""  # the system prompt layer, said in a comment
    details: Mapping[str, Any] = field(default_factory=dict)  # family, size, quantization
    problem: str = ""  # why it cannot be imported; "" = it can


def default_stores(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where Ollama keeps models: $OLLAMA_MODELS, the user's, the Linux service's."""
    env = os.environ if env is None else env
    out: list[Path] = []
    if env.get("OLLAMA_MODELS"):
        out.append(Path(env["OLLAMA_MODELS"]).expanduser())
    out.append(Path(env.get("HOME", "~")).expanduser() / ".ollama" / "models")
    out.append(Path("/usr/share/ollama/.ollama/models"))
    return list(dict.fromkeys(out))


def manifests(store: Path) -> Iterator[Path]:
    """Every manifest: exactly manifests/<host>/<namespace>/<model>/<tag>, hidden files
    skipped, as Ollama itself reads the store."""
    for path in sorted((store / "manifests").glob("*/*/*/*")):
        parts = path.relative_to(store / "manifests").parts
        if path.is_file() and not any(p.startswith(".") for p in parts):
            yield path


def blob_path(store: Path, digest: str) -> Path:
    return store / "blobs" / digest.replace(":", "-", 1)


def dx_name(host: str, namespace: str, model: str, tag: str) -> str:
    name = f"{model}:{tag}"
    if namespace != DEFAULT_NAMESPACE or host != DEFAULT_HOST:
        name = f"{namespace}/{name}"
    if host != DEFAULT_HOST:
        name = f"{host}/{name}"
    return name


def read_manifest(store: Path, path: Path) -> OllamaModel:
    host, namespace, model, tag = path.relative_to(store / "manifests").parts
    name = dx_name(host, namespace, model, tag)
    ref = f"{host}/{namespace}/{model}:{tag}"
    base = OllamaModel(name=name, ref=ref, manifest=path)
    try:
        doc = json.loads(path.read_bytes())
        layers = [layer for layer in doc.get("layers", []) if isinstance(layer, dict)]
    except (ValueError, AttributeError) as exc:
        return _with(base, problem=f"the manifest is not valid JSON ({exc})")

    def blobs(media: str) -> list[Path]:
        return [
            blob_path(store, str(layer.get("digest", "")))
            for layer in layers
            if layer.get("mediaType") == media
        ]

    models = blobs(MODEL)
    if not models:
        kinds = sorted({str(layer.get("mediaType", "")).removeprefix(MEDIA) for layer in layers})
        return _with(base, problem=f"no GGUF model layer (layers: {', '.join(kinds)})")
    gguf = models[0]
    if not gguf.is_file():
        return _with(base, problem=f"its model blob is missing: {gguf}")
    with gguf.open("rb") as f:
        if f.read(4) != b"GGUF":
            return _with(base, problem=f"its model blob is not a GGUF file: {gguf}")
    params: dict[str, Any] = {}
    for p in blobs(PARAMS):
        try:
            loaded = json.loads(p.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(loaded, dict):
            params.update(loaded)
    details: dict[str, Any] = {}
    config = doc.get("config")
    if isinstance(config, dict) and config.get("digest"):
        try:
            loaded = json.loads(blob_path(store, str(config["digest"])).read_bytes())
            if isinstance(loaded, dict):
                details = loaded
        except (OSError, ValueError):
            pass
    if details.get("remote_host"):
        return _with(base, problem="a cloud model (remote_host): there are no weights here")
    unused = sorted(
        {
            str(layer.get("mediaType")).removeprefix(MEDIA)
            for layer in layers
            if layer.get("mediaType") in (TEMPLATE, PROMPT, MESSAGES)
        }
    )
    system = ""
    for p in blobs(SYSTEM):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            system = p.read_text(encoding="utf-8").strip()
    return OllamaModel(
        name=name,
        ref=ref,
        manifest=path,
        gguf=gguf,
        size=gguf.stat().st_size,
        params=params,
        projectors=tuple(p for p in blobs(PROJECTOR) if p.is_file()),
        adapters=tuple(p for p in blobs(ADAPTER) if p.is_file()),
        unused=tuple(unused),
        system=system,
        details=details,
    )


def _with(base: OllamaModel, *, problem: str) -> OllamaModel:
    return OllamaModel(name=base.name, ref=base.ref, manifest=base.manifest, problem=problem)


def read_store(store: Path) -> list[OllamaModel]:
    """Every model of the store; the ones that cannot be served carry a `problem`."""
    return [read_manifest(store, path) for path in manifests(store)]


# -- YAML -------------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    """A YAML scalar: JSON is valid YAML, and quotes every string."""
    return json.dumps(value, ensure_ascii=False)


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def entry(m: OllamaModel) -> list[str]:
    """The lines of one `models:` entry (indented for the mapping)."""
    assert m.gguf is not None
    d = m.details
    about = ", ".join(
        str(x) for x in (d.get("model_family"), d.get("model_type"), d.get("file_type")) if x
    )
    lines = [f"  {_scalar(m.name)}:", f"    # {m.ref}" + (f": {about}" if about else "")]
    lines += ["    engine: llamacpp", f"    model: {_scalar(str(m.gguf))}"]
    params = dict(m.params)
    if isinstance(params.get("num_ctx"), int | float) and params["num_ctx"] > 0:
        lines.append(f"    context: {int(params['num_ctx'])}  # num_ctx")
    args: list[str] = []
    mapped: list[str] = []
    unmapped: list[str] = []
    for key, value in params.items():
        if key in LLAMA_SERVER_FLAGS and isinstance(value, int | float | str):
            args += [LLAMA_SERVER_FLAGS[key], _flag_value(value)]
            mapped.append(key)
        elif key == "use_mmap" and value is False:
            args += ["--load-mode", "none"]  # as Ollama itself runs llama-server for it
            mapped.append(key)
        elif key == "num_ctx":
            continue
        else:
            why = NOT_MAPPED.get(key, "no DX or llama-server setting for it")
            unmapped.append(f"{key} {json.dumps(value)} ({why})")
    for p in m.projectors[:1]:
        args += ["--mmproj", str(p)]
    for p in m.adapters:
        args += ["--lora", str(p)]
    if args:
        said = [f"{', '.join(mapped)} from Ollama's params"] if mapped else []
        said += ["--mmproj: its vision projector"] if m.projectors else []
        said += ["--lora: its adapter"] if m.adapters else []
        lines.append(f"    # llama-server settings: {'; '.join(said)}")
        lines.append(f"    args: [{', '.join(_scalar(a) for a in args)}]")
    if len(m.projectors) > 1:
        others = ", ".join(str(p) for p in m.projectors[1:])
        lines.append(f"    # more vision projectors, not used (llama-server takes one): {others}")
    for note in unmapped:
        lines.append(f"    # not mapped: {note}")
    if m.system:
        text = m.system if len(m.system) <= 120 else m.system[:117] + "..."
        lines.append(f"    # Ollama's system prompt, not applied by DX: {json.dumps(text)}")
    if m.unused:
        lines.append(
            f"    # not used: {', '.join(m.unused)} (llama-server uses the chat template "
            "inside the GGUF)"
        )
    return lines


def render_config(store: Path, models: list[OllamaModel]) -> str:
    now = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    head = [
        f"# Models of the Ollama store {store}, written by `dx import-ollama` on {now}.",
        "# The GGUF blobs are served where they are: nothing was copied. `ollama rm` (or",
        "# `ollama pull` of a newer version) deletes a blob no manifest needs any more; run",
        "# `dx import-ollama` again after changing the Ollama store.",
        "# Serve these alone (dx serve --config FILE) or move the entries under `models:` of",
        "# your dx.yaml. Check with: dx config check FILE",
        "models:",
    ]
    lines = list(head)
    for m in models:
        lines += entry(m)
    return "\n".join(lines) + "\n"


def find_store(explicit: str | None) -> Path:
    if explicit:
        store = Path(explicit).expanduser()
        if not (store / "manifests").is_dir():
            raise click.ClickException(
                f"{store} is not an Ollama store (no manifests/ folder in it); Ollama keeps "
                "models in ~/.ollama/models, or /usr/share/ollama/.ollama/models for its service"
            )
        return store
    for store in default_stores():
        if (store / "manifests").is_dir():
            return store
    looked = ", ".join(str(s) for s in default_stores())
    raise click.ClickException(
        f"no Ollama store found (looked in {looked}); name one with --store PATH"
    )


@click.command("import-ollama")
@click.option(
    "--store",
    type=click.Path(file_okay=False),
    help="The Ollama models folder. Default: $OLLAMA_MODELS, ~/.ollama/models, then "
    "/usr/share/ollama/.ollama/models.",
)
@click.option(
    "--write",
    "write_to",
    type=click.Path(dir_okay=False),
    help="Write the config to FILE instead of printing it.",
)
@click.option("--force", is_flag=True, help="With --write: replace FILE if it exists.")
def import_ollama(store: str | None, write_to: str | None, force: bool) -> None:
    """Write DX config entries for the models of an Ollama store, served in place.

    Every GGUF model found becomes a `models:` entry (engine llamacpp) named as Ollama
    names it (`llama3.2:latest`; other namespaces keep theirs: `user/model:tag`) that
    serves the blob where it is. Ollama's params become engine settings where DX has
    them; the rest is said in comments. The store is only read, never changed.
    """
    root = find_store(store)
    click.echo(f"reading the Ollama store {root}", err=True)
    found = read_store(root)
    usable = [m for m in found if not m.problem]
    for m in found:
        if m.problem:
            click.echo(f"  skipped {m.ref}: {m.problem}", err=True)
        else:
            click.echo(f"  {m.name}  {m.size / 2**30:.2f} GiB  {m.gguf}", err=True)
    if not usable:
        raise click.ClickException(f"no GGUF model to import in {root}")
    text = render_config(root, usable)
    if write_to:
        target = Path(write_to)
        if target.exists() and not force:
            raise click.ClickException(f"{target} exists; pass --force to replace it")
        target.write_text(text, encoding="utf-8")
        where = f"wrote {target}"
    else:
        sys.stdout.write(text)
        where = "printed the config above"
    skipped = len(found) - len(usable)
    summary = f"{len(usable)} model(s) imported" + (f", {skipped} skipped" if skipped else "")
    click.echo(f"{summary}; {where}", err=True)
