"""The page of `lost app` (Gradio): tabs Generate, Tokenize and Complete over one `AppSession`.

Every event has an HTTP API name (/generate, /tokenize, /prefix, /complete; `gradio_client` or the page's
"Use via API" link). A user error (a corrupt or empty upload, too many faces, not a mesh, tokens of another
model) becomes a one-line message on the page, and the server goes on serving. Requests queue: one runs
at a time (`build_app(..., concurrency=1)`), the others wait their turn with their place shown.
Nothing is fetched from the internet: the page's scripts, styles and fonts come with the gradio wheel.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import gradio as gr

from ..errors import LostError
from .session import AppSession, PrefixDecode, Samples, prefix_ladder

MAX_SAMPLES = 4  # 3D viewers on the Generate and Complete tabs
UPLOAD_TYPES = [".glb", ".gltf", ".obj", ".ply", ".stl", ".off", ".safetensors"]
PAGE_CSS = """
.lost-note {font-size: 0.9em; opacity: 0.85}
#lost-prefix input[type=number], #lost-prefix .reset-button, #lost-prefix .min_value, #lost-prefix .max_value {
  display: none !important;
}
"""  # the prefix slider moves over positions in 1, 2, 4, ..., R: its own number box would show the position


def _user_errors(fn):
    """A `LostError` becomes a `gr.Error`: its one line on the page, the server unharmed. Streaming
    (generator) handlers stay generators, so the page shows each step as it comes."""

    def message(e: LostError) -> gr.Error:
        return gr.Error(" ".join(str(e).split()), print_exception=False)

    if inspect.isgeneratorfunction(getattr(fn, "func", fn)):
        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except LostError as e:
                raise message(e) from None

        return streaming

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LostError as e:
            raise message(e) from None

    return plain


def _file(upload) -> tuple[Path, str]:
    """(path on the server, the name the user gave it) of a gr.File value."""
    if upload is None:
        raise _NoUpload("no file: upload a mesh (glb, gltf, obj, ply, stl, off) or a tokens file")
    path = Path(upload if isinstance(upload, str) else upload.name)
    return path, path.name


class _NoUpload(LostError):
    """No file was given."""


def _chamfer_rows(decodes: list[PrefixDecode]) -> list[list]:
    return [[d.k, None if d.chamfer is None else round(100 * d.chamfer, 3), round(d.seconds, 2),
             "yes" if d.mesh is not None else "no surface"] for d in decodes]


def _prefix_note(d: PrefixDecode, total: int) -> str:
    cd = "" if d.chamfer is None else f"; Chamfer to the input {100 * d.chamfer:.3f} x 10^-2"
    source = "from the cache" if d.cached else f"decoded in {d.seconds:.1f} s"
    empty = " (no surface at this prefix)" if d.mesh is None else ""
    return f"**k = {d.k}** of {total} tokens{empty}{cd} ({source})"


def _sample_outputs(samples: Samples) -> list:
    """Viewers (MAX_SAMPLES, unused ones hidden), the grid of every sample's four views, downloads, note."""
    recs = samples.records
    viewers = [gr.Model3D(value=recs[i]["meshes"].get("glb"), visible=True, label=f"sample {i}: {recs[i]['prompt'][:40]}")
               if i < len(recs) else gr.Model3D(value=None, visible=False) for i in range(MAX_SAMPLES)]
    files = [f for r in recs for f in r["meshes"].values()] + [r["tokens"] for r in recs]
    s = samples.settings
    note = (f"{len(recs)} sample(s), {s.get('k')} tokens (kept {s.get('keep')}), guidance {s.get('guidance')}, "
            f"temperature {s.get('temperature')}, seed {s.get('seed')} ({samples.seconds:.1f} s)")
    return [*viewers, str(samples.grid), files, note]


def build_app(session: AppSession, title: str = "LoST", concurrency: int = 1) -> gr.Blocks:
    """The page: three tabs over `session`; requests queue, `concurrency` at a time."""
    pipe = session.pipe
    R = pipe.num_tokens
    has_gpt = "gpt" in pipe.components or pipe._gpt is not None
    L = pipe.gpt_length if has_gpt else R
    gen = pipe.generation

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## LoST: Level-of-Semantics tokens\nModel `{pipe.model_id[:12]}`: {R} tokens of "
                    f"{pipe.token_dim} numbers per shape; the first token is the coarse object, each further "
                    "one adds detail.")
        with gr.Tab("Generate"):
            g_in, g_out = _generate_tab(gen, L, has_gpt)
        with gr.Tab("Tokenize"):
            t_parts = _tokenize_tab(R)
        with gr.Tab("Complete"):
            c_in, c_out = _complete_tab(gen, R, L, has_gpt)

        queue = {"concurrency_id": "model", "concurrency_limit": concurrency}  # one queue for every event
        g_in["button"].click(_user_errors(functools.partial(_generate, session)), inputs=g_in["values"],
                             outputs=g_out, api_name="generate", **queue)
        t_parts["upload"].upload(_user_errors(functools.partial(_tokenize, session)), inputs=t_parts["upload"],
                                 outputs=t_parts["outputs"], api_name="tokenize", **queue)
        t_parts["slider"].change(_user_errors(functools.partial(_prefix, session)),
                                 inputs=[t_parts["key"], t_parts["slider"]], outputs=t_parts["view"],
                                 api_name="prefix", show_progress="minimal", **queue)
        c_in["button"].click(_user_errors(functools.partial(_complete, session)), inputs=c_in["values"],
                             outputs=c_out, api_name="complete", **queue)
    app.queue(default_concurrency_limit=concurrency)
    return app


def _sample_panel() -> list:
    viewers = []
    with gr.Row():
        for i in range(MAX_SAMPLES):
            viewers.append(gr.Model3D(label=f"sample {i}", visible=i == 0, height=320))
    grid = gr.Image(label="four views of each sample (front, right / back, left)", type="filepath", height=300)
    files = gr.File(label="downloads: GLB, OBJ, PLY and tokens of each sample", file_count="multiple")
    note = gr.Markdown(elem_classes="lost-note")
    return [*viewers, grid, files, note]


def _settings_row(gen: dict, L: int) -> list:
    with gr.Row():
        seed = gr.Number(value=0, precision=0, label="seed")
        n = gr.Slider(1, MAX_SAMPLES, value=1, step=1, label="samples")
        guidance = gr.Slider(1.0, 8.0, value=float(gen["guidance"]), step=0.5, label="guidance (cfg)")
        temperature = gr.Slider(0.1, 2.0, value=float(gen["temperature"]), step=0.05, label="temperature")
    return [seed, n, guidance, temperature]


def _generate_tab(gen: dict, L: int, has_gpt: bool) -> tuple[dict, list]:
    if not has_gpt:
        gr.Markdown("This bundle has no LoST-GPT (`lost gpt export RUN --into BUNDLE` adds one).")
    prompt = gr.Textbox(label="prompt", value="a round table with a single pedestal leg")
    settings = _settings_row(gen, L)
    tokens = gr.Slider(1, L, value=L, step=1, label="tokens to generate (fewer: a coarse draft)")
    button = gr.Button("Generate", variant="primary", interactive=has_gpt)
    return {"button": button, "values": [prompt, *settings, tokens]}, _sample_panel()


def _tokenize_tab(R: int) -> dict:
    ladder = " · ".join(map(str, prefix_ladder(R)))
    upload = gr.File(label="mesh (glb, gltf, obj, ply, stl, off)", file_types=UPLOAD_TYPES[:-1])
    key = gr.Textbox(visible="hidden", label="upload id")
    tokens_file = gr.File(label="tokens (lost decode / generate --prefix read it)")
    slider = gr.Slider(0, len(prefix_ladder(R)) - 1, value=0, step=1, elem_id="lost-prefix",
                       label=f"prefix length: slide through {ladder} tokens")
    note = gr.Markdown(elem_classes="lost-note")
    with gr.Row():
        viewer = gr.Model3D(label="decode of the prefix", height=360)
        with gr.Column():
            preview = gr.Image(label="four views", type="filepath", height=200)
            prefix_file = gr.File(label="the first k tokens")
    strip = gr.Image(label="every prefix, front view", type="filepath")
    table = gr.Dataframe(headers=["k", "Chamfer x10^-2", "decode s", "surface"], label="Chamfer to the input per k")
    view = [viewer, preview, note, prefix_file]
    return {"upload": upload, "key": key, "slider": slider, "view": view,
            "outputs": [key, tokens_file, *view, strip, table]}


def _complete_tab(gen: dict, R: int, L: int, has_gpt: bool) -> tuple[dict, list]:
    upload = gr.File(label="mesh or tokens file", file_types=UPLOAD_TYPES)
    keep = gr.Slider(1, min(R, L), value=1, step=1, label="tokens to keep (the GPT writes the rest)")
    prompt = gr.Textbox(label="prompt", value="a chair")
    settings = _settings_row(gen, L)
    button = gr.Button("Complete", variant="primary", interactive=has_gpt)
    return {"button": button, "values": [upload, keep, prompt, *settings]}, _sample_panel()


# ----------------------------------------------------------------------------------------------------
# Handlers
# ----------------------------------------------------------------------------------------------------


def _generate(session: AppSession, prompt, seed, n, guidance, temperature, tokens):
    return _sample_outputs(session.generate(prompt or "", n=int(n), seed=int(seed or 0), guidance=float(guidance),
                                            temperature=float(temperature), tokens=int(tokens)))


def _complete(session: AppSession, upload, keep, prompt, seed, n, guidance, temperature):
    path, name = _file(upload)
    first = session.tokenize(path, name)
    keep = min(int(keep), first.tokens.k)
    return _sample_outputs(session.generate(prompt or "", n=int(n), seed=int(seed or 0), guidance=float(guidance),
                                            temperature=float(temperature), prefix=first, keep=keep))


def _tokenize(session: AppSession, upload, progress=gr.Progress()):
    """Upload -> tokens and the k = 1 decode at once, then the other prefixes one by one (streamed)."""
    path, name = _file(upload)
    progress(0.0, desc="tokenizing")
    up = session.tokenize(path, name)
    total = up.tokens.k
    done = []
    for i, k in enumerate(up.ladder):
        progress((i, len(up.ladder)), desc=f"decoding k = {k}")
        done.append(session.decode(up.key, k))
        first = done[0]  # the page shows k = 1 while the longer prefixes are decoded
        yield [up.key, str(up.tokens_file), _path(first.mesh), str(first.preview), _prefix_note(first, total),
               str(session.prefix_tokens(up.key, first.k)), str(session.strip(up.key)), _chamfer_rows(done)]


def _prefix(session: AppSession, key, index):
    if not key:
        return [None, None, "upload a mesh first", None]
    up = session.upload(key)
    k = up.ladder[max(0, min(int(index), len(up.ladder) - 1))]
    d = session.decode(key, k)
    return [_path(d.mesh), str(d.preview), _prefix_note(d, up.tokens.k), str(session.prefix_tokens(key, k))]


def _path(p: Path | None) -> str | None:
    return None if p is None else str(p)
