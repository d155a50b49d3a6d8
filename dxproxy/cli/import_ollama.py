"""`dx import-ollama`: config entries that serve an Ollama store's GGUF blobs in place.

The store is read by dxproxy/models/ollama_store.py. Its model layer is a plain GGUF file,
so llama.cpp can serve the blob where it is: nothing is copied, converted or written into
the store, and 50 GB of models stay 50 GB.

The params layer (Ollama's Modelfile PARAMETERs) becomes DX and llama-server settings where
there is one (num_ctx -> context, temperature -> --temp, ...); what has none is said in a
comment of the entry, as are the projector (-> --mmproj) and the layers DX does not use.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from dxproxy.models.ollama_store import OllamaModel, default_stores, read_store

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
