"""What each token prefix carries, and how much of it the decoder reads: `lost eval tokens`.

The reconstruction table (`eval/recon.py`) says how good prefix decodes are; this report says why a curve
is flat. For every prefix length k, on the normalised latents of one split (NMSE = mean squared error over
the latent's elements / the split's mean per-element variance, so predicting the split's own mean scores 1):

- `probe_nmse`: a ridge regression from the first k tokens (flattened, plus a bias) to the latent, fitted on
  the probe split (train) and scored on the evaluated split: how much of the latent the prefix holds in
  linearly readable form. It can fall with k even when the later tokens are copies of token 1: a copy passed
  through the encoder's non-linearities is a new linear feature of token 1.
- `kernel_nmse`: an RBF kernel ridge regression from the first k tokens to the latent (width from the median
  distance, ridge and width chosen on a held-out fifth of the probe split). A non-linear probe reads token 1
  alone as well as any function of it, so it falls with k only when the later tokens add information.
- `cosine_to_first`: mean cosine between token k and token 1 of the same shape (tokens are z-scored, so this
  is their correlation over channels). Near 1 for every k: the sequence repeats itself. `token_cosine` in the
  report is the mean over all pairs of distinct positions.
- `pca_nmse`: the error of the best linear code of the same size: the latent projected on the first
  k * token_dim principal components of the probe split (scored on the evaluated split). It is a yardstick,
  not a bound: where the decoded error at k is above it, a linear code of k tokens' numbers would do better,
  so the tokenizer (its decoder or its training budget), not the data, limits that k; where it keeps falling
  with k, the data still hold detail that later tokens could carry.
- `posterior_nmse`: the decoder's own estimate of the clean latent from the prefix at one high noise level
  (x0_hat of a single forward pass at time `t`, default 0.95: almost all of the latent must come from the
  tokens). If it stays level while `probe_nmse` falls, the decoder is not reading the later tokens.
- `sample_nmse`: full decodes (the pipeline's sampler, `steps`, `guidance`, seeded), the error a user sees.

The ridge strength is chosen per k on a held-out fifth of the probe split, then refitted on all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.latents import LATENTS, principal_axes, require_latents
from ..data.store import DatasetStore
from ..errors import ConfigError, DataError
from ..models.flow import noised, predict_x0, sample_latents
from ..persist import atomic_write_json
from .recon import resolve_ks

RIDGE_LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0)
KERNEL_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0)  # kernel ridge strengths (the kernel matrix has ones on its diagonal)
KERNEL_WIDTHS = (0.5, 1.0, 2.0)  # RBF widths, as multiples of the median pairwise distance


@dataclass
class TokenProbeConfig:
    split: str = "val"  # split that is scored
    probe_split: str = "train"  # split the ridge probes are fitted on
    ks: tuple[int | str, ...] = (1, 2, 4, 8, 16, "all")  # prefix lengths; "all" = R
    t: float = 0.95  # noise level of the posterior-mean estimate (flow sigma / fraction of the DDPM chain)
    steps: int = 25  # sampling steps of the full decodes; 0 skips sample_nmse
    guidance: float = 1.0  # classifier-free guidance of the full decodes
    limit: int | None = None  # at most this many items of each split
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.t <= 1.0:
            raise ConfigError(f"--t: must be in (0, 1], got {self.t}")


def load_latents(root: str | Path, split: str, limit: int | None = None) -> torch.Tensor:
    """Raw latents [N, C, H, W] of one split from the dataset's `latents` table."""
    store = DatasetStore(root)
    require_latents(store)
    ids = store.ids(split=split, table=LATENTS)[:limit]
    if len(ids) < 2:
        raise DataError(f"{root}: split {split!r} has {len(ids)} latents; the probe needs at least 2")
    return torch.stack([torch.from_numpy(np.asarray(store.load(i, keys=["z"], table=LATENTS)["z"],
                                                    dtype=np.float32)) for i in ids])


def ridge_fit(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """W [D+1, T] minimising |[x, 1] W - y|^2 + lam |W|^2 (float64)."""
    a = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    return torch.linalg.solve(a.T @ a + lam * torch.eye(a.shape[1], dtype=x.dtype), a.T @ y)


def ridge_predict(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1) @ w


def probe_nmse(train_tokens: torch.Tensor, train_x: torch.Tensor, tokens: torch.Tensor, x: torch.Tensor,
               k: int, var: float) -> tuple[float, float]:
    """(NMSE on the scored split, chosen lambda) of the ridge probe from the first k tokens."""
    f_tr, f_ev = train_tokens[:, :k].flatten(1).double(), tokens[:, :k].flatten(1).double()
    y_tr, y_ev = train_x.flatten(1).double(), x.flatten(1).double()
    cut = max(1, len(f_tr) * 4 // 5)
    if cut < len(f_tr):
        errs = {lam: ((ridge_predict(f_tr[cut:], ridge_fit(f_tr[:cut], y_tr[:cut], lam)) - y_tr[cut:]) ** 2).mean()
                for lam in RIDGE_LAMBDAS}
        lam = float(min(errs, key=lambda v: float(errs[v])))
    else:
        lam = RIDGE_LAMBDAS[len(RIDGE_LAMBDAS) // 2]
    err = ((ridge_predict(f_ev, ridge_fit(f_tr, y_tr, lam)) - y_ev) ** 2).mean().item()
    return err / var, lam


def pca_nmse(mean: torch.Tensor, axes: torch.Tensor, x: torch.Tensor, n: int, var: float) -> float:
    """NMSE of x [N, ...] reconstructed from its first n principal components (of the probe split)."""
    y = x.flatten(1).double() - mean
    v = axes[:n]
    return float(((y - (y @ v.T) @ v) ** 2).mean()) / var


def rbf_kernel(a: torch.Tensor, b: torch.Tensor, width: float) -> torch.Tensor:
    """exp(-|a_i - b_j|^2 / (2 width^2)) for rows of a [N, F] and b [M, F] -> [N, M] (float64)."""
    return torch.exp(-torch.cdist(a, b).pow(2) / (2.0 * width**2))


def median_distance(x: torch.Tensor, max_rows: int = 1000) -> float:
    """Median pairwise distance between (up to `max_rows` evenly spaced) rows of x [N, F]."""
    x = x[torch.linspace(0, len(x) - 1, min(len(x), max_rows)).long()]
    d = torch.cdist(x, x)
    return float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)].median().clamp(min=1e-8))


def kernel_fit_predict(x_tr: torch.Tensor, y_tr: torch.Tensor, x_ev: torch.Tensor, width: float,
                       lam: float) -> torch.Tensor:
    """Kernel ridge regression (RBF, centred targets): predictions for x_ev [M, F] from (x_tr, y_tr)."""
    mean = y_tr.mean(dim=0, keepdim=True)
    k = rbf_kernel(x_tr, x_tr, width)
    alpha = torch.linalg.solve(k + lam * torch.eye(len(k), dtype=k.dtype), y_tr - mean)
    return rbf_kernel(x_ev, x_tr, width) @ alpha + mean


def kernel_probe_nmse(train_tokens: torch.Tensor, train_x: torch.Tensor, tokens: torch.Tensor, x: torch.Tensor,
                      k: int, var: float) -> tuple[float, dict]:
    """(NMSE on the scored split, {"lambda", "width"}) of the RBF kernel ridge probe from the first k tokens."""
    f_tr, f_ev = train_tokens[:, :k].flatten(1).double(), tokens[:, :k].flatten(1).double()
    y_tr, y_ev = train_x.flatten(1).double(), x.flatten(1).double()
    base = median_distance(f_tr)
    cut = max(1, len(f_tr) * 4 // 5)
    best = {"lambda": KERNEL_LAMBDAS[1], "width": base}
    if cut < len(f_tr):
        errs = {(lam, m): float(((kernel_fit_predict(f_tr[:cut], y_tr[:cut], f_tr[cut:], m * base, lam)
                                  - y_tr[cut:]) ** 2).mean())
                for lam in KERNEL_LAMBDAS for m in KERNEL_WIDTHS}
        lam, m = min(errs, key=errs.get)
        best = {"lambda": lam, "width": m * base}
    err = float(((kernel_fit_predict(f_tr, y_tr, f_ev, best["width"], best["lambda"]) - y_ev) ** 2).mean())
    return err / var, best


def token_cosines(tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Tokens [N, R, D] -> (mean cosine of token j with token 1, [R]; mean cosine over all pairs i != j)."""
    t = torch.nn.functional.normalize(tokens.double(), dim=-1)
    sim = t @ t.transpose(1, 2)  # [N, R, R]
    R = sim.shape[1]
    off = ~torch.eye(R, dtype=torch.bool)
    pairs = float(sim[:, off].mean()) if R > 1 else 1.0
    return sim[:, 0].mean(dim=0), pairs


@torch.no_grad()
def encode_all(tokenizer, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([tokenizer.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate_token_probe(pipeline, root: str | Path, cfg: TokenProbeConfig, out_dir: str | Path | None = None,
                         command: str = "") -> dict[str, Any]:
    """The report (also written to OUT/tokens.json and OUT/tokens.md when `out_dir` is given)."""
    tok = pipeline.tokenizer
    kind = pipeline.sampling["scheduler"]
    z_eval = load_latents(root, cfg.split, cfg.limit)
    z_probe = load_latents(root, cfg.probe_split, cfg.limit)
    if list(z_eval.shape[1:]) != list(tok.config.latent_shape):
        raise DataError(f"{root}: latents {list(z_eval.shape[1:])} do not match the tokenizer's "
                        f"{list(tok.config.latent_shape)} (encode the dataset with this bundle's VAE)")
    ks = resolve_ks(list(cfg.ks), tok.num_registers)
    device = pipeline.device
    x = tok.normalize(z_eval.to(device)).float()
    x_probe = tok.normalize(z_probe.to(device)).float()
    var = x.var(dim=0, unbiased=False).mean().item()
    mean_nmse = ((x - x_probe.mean(0, keepdim=True)) ** 2).mean().item() / var
    tokens, tokens_probe = encode_all(tok, x, cfg.batch_size), encode_all(tok, x_probe, cfg.batch_size)

    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    noise = torch.randn(x.shape, generator=gen).to(device)
    u = torch.full((len(x),), float(cfg.t), device=device)
    pred_kind = tok.config.prediction
    x_t, t, _ = noised(kind, x, noise, u, prediction=pred_kind)
    probe_data = (tokens_probe.cpu(), x_probe.cpu(), tokens.cpu(), x.cpu())  # the ridge fits run on the CPU
    to_first, pair_cos = token_cosines(tokens.cpu())
    pca_mean, pca_axes = principal_axes(probe_data[1])  # fitted once; each k keeps its first k * token_dim axes
    rows = []
    for k in ks:
        p_nmse, lam = probe_nmse(*probe_data, k, var)
        k_nmse, kernel = kernel_probe_nmse(*probe_data, k, var)
        post = []
        for i in range(0, len(x), cfg.batch_size):
            sl = slice(i, i + cfg.batch_size)
            keep = torch.full((len(x[sl]),), k, device=device)
            pred = tok.decode(tokens[sl], keep, x_t[sl], t[sl], torch.zeros_like(keep, dtype=torch.bool))
            post.append(predict_x0(kind, x_t[sl], t[sl], pred, prediction=pred_kind))
        row = {"k": k, "probe_nmse": p_nmse, "probe_lambda": lam, "kernel_nmse": k_nmse,
               "kernel_lambda": kernel["lambda"], "kernel_width": kernel["width"],
               "cosine_to_first": float(to_first[k - 1]),
               "pca_nmse": pca_nmse(pca_mean, pca_axes, probe_data[3], k * tok.config.token_dim, var),
               "posterior_nmse": ((torch.cat(post) - x) ** 2).mean().item() / var, "sample_nmse": None}
        if cfg.steps > 0:
            dec = [sample_latents(tok, tokens[i:i + cfg.batch_size], k, steps=cfg.steps, guidance=cfg.guidance,
                                  generator=torch.Generator().manual_seed(cfg.seed + i), kind=kind,
                                  shift=float(pipeline.sampling["shift"]),
                                  temperature=float(pipeline.sampling["temperature"]))
                   for i in range(0, len(x), cfg.batch_size)]
            row["sample_nmse"] = ((torch.cat(dec).to(device) - x) ** 2).mean().item() / var
        rows.append(row)
    report = {"rows": rows, "mean_nmse": mean_nmse, "token_cosine": pair_cos, "split": cfg.split, "probe_split": cfg.probe_split,
              "n": len(x), "n_probe": len(x_probe), "t": cfg.t, "steps": cfg.steps, "guidance": cfg.guidance,
              "temperature": float(pipeline.sampling["temperature"]),
              "num_tokens": tok.num_registers, "model_id": pipeline.model_id, "command": command}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "tokens.json", report)
        (out / "tokens.md").write_text(render_markdown(report))
    return report


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def render_markdown(report: dict) -> str:
    lines = [
        "# What the token prefixes carry (`lost eval tokens`)", "",
        f"Split `{report['split']}` ({report['n']} latents); ridge probes fitted on `{report['probe_split']}` "
        f"({report['n_probe']}). NMSE of normalised latents; predicting the {report['probe_split']} mean scores "
        f"{report['mean_nmse']:.3f}. Posterior: one decoder pass at t = {report['t']}. Samples: "
        f"{report['steps']} steps, guidance {report['guidance']}, temperature {report['temperature']:g}. Mean cosine "
        f"between two tokens of one shape (all position pairs): {report['token_cosine']:.3f}.",
        f"Command: `{report['command']}`" if report.get("command") else "", "",
        "| k | cos(token k, token 1) | linear probe NMSE | kernel probe NMSE | PCA, same numbers | "
        "decoder posterior NMSE | decoded sample NMSE |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['k']} | {_f(r['cosine_to_first'])} | {_f(r['probe_nmse'])} | {_f(r['kernel_nmse'])} | "
                     f"{_f(r['pca_nmse'])} | {_f(r['posterior_nmse'])} | {_f(r['sample_nmse'])} |")
    lines += ["", "- The kernel probe falls with k only when later tokens add information about the latent; the "
              "linear probe can also fall when they are non-linear copies of token 1 (then cos(token k, token 1) "
              "stays near 1).",
              "- A probe NMSE that falls with k while the decoder's stays level means the later tokens hold "
              "information that the decoder does not read.",
              "- PCA, same numbers: the latent kept to its first k x token_dim principal components (of the "
              f"{report['probe_split']} split). A decoded error above it means a linear code of that size does "
              "better: the tokenizer, not the data, limits that k.", ""]
    return "\n".join(lines)
