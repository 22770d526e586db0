"""Plots of a training run: learning curves from metrics.csv and model diagnostics from
diagnostics.jsonl (e.g. the Q-Former's token specialization), written as PNG files; for mixture
models (residual_mixture) the gate and the router's expert usage per epoch (or federated round)."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def _read_metrics(run: Path) -> list[dict[str, float]]:
    path = run / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics.csv (is {run} a run directory written by `crbr train`?)")
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


def read_diagnostics(run: Path) -> list[dict]:
    """Rows of diagnostics.jsonl, one per evaluated epoch (the last row wins for a repeated epoch)."""
    path = run / "diagnostics.jsonl"
    if not path.exists():
        return []
    by_epoch: dict[int, dict] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {i}: not JSON ({e})") from e
        by_epoch[int(row["epoch"])] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_run(run: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the run's plots (PNG) into out_dir (default: RUN/plots); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    run = Path(run)
    out = Path(out_dir) if out_dir else run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    rows = _read_metrics(run)
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(ep, [r.get("train_loss", np.nan) for r in rows])
    ax[0].set(xlabel="epoch", ylabel="training loss", title="loss")
    for key in ("valid_NDCG@10", "valid_HR@10", "valid_Recall@50"):
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        if pts:
            ax[1].plot(*zip(*pts), marker=".", label=key.removeprefix("valid_"))
    ax[1].set(xlabel="epoch", title="validation (full ranking)")
    ax[1].legend()
    fig.tight_layout()
    written.append(out / "curves.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    written += _plot_mixture(rows, out, plt)
    diag = read_diagnostics(run)
    if diag and any(k in diag[0] for k in ("token_cosine", "attn_entropy", "win_share")):
        dep = [d["epoch"] for d in diag]
        fig, ax = plt.subplots(1, 3, figsize=(15, 3.8))
        if "token_cosine" in diag[0]:
            ax[0].plot(dep, [d["token_cosine"] for d in diag], marker=".")
            ax[0].set(xlabel="epoch", ylabel="mean pairwise cosine", title="token similarity (1 = collapsed)")
        if "attn_entropy" in diag[0]:
            ent = np.array([d["attn_entropy"] for d in diag])  # (epochs, M)
            im = ax[1].imshow(ent.T, aspect="auto", origin="lower", extent=(dep[0] - 0.5, dep[-1] + 0.5, -0.5, ent.shape[1] - 0.5))
            fig.colorbar(im, ax=ax[1], label="nats")
            ax[1].set(xlabel="epoch", ylabel="token", title="cross-attention entropy per token")
        if diag[-1].get("win_share"):
            ws = diag[-1]["win_share"]
            keys = sorted(ws, key=int)
            mat = np.array([ws[k] for k in keys])  # (buckets, M)
            im = ax[2].imshow(mat, aspect="auto", cmap="viridis")
            fig.colorbar(im, ax=ax[2], label="share of targets")
            ax[2].set(xlabel="token", ylabel="popularity bucket (0 = head)", yticks=range(len(keys)),
                      yticklabels=keys, title=f"which token wins the max (epoch {dep[-1]})")
        fig.tight_layout()
        written.append(out / "diagnostics.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    written += _plot_scalar_diagnostics(diag, out, plt)
    return written


def _plot_scalar_diagnostics(diag: list[dict], out: Path, plt) -> list[Path]:
    """Every scalar diagnostic a model logs (e.g. CRBR's per-layer code perplexity and dead-code
    share, distinct first codes, path purity) against the epoch, one small panel each."""
    keys = [k for k, v in diag[0].items() if k != "epoch" and isinstance(v, (int, float))] if diag else []
    if not keys:
        return []
    cols = min(4, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    ep = [d["epoch"] for d in diag]
    for ax, k in zip(axes.flat, keys):
        ax.plot(ep, [d.get(k, float("nan")) for d in diag], marker=".")
        ax.set(xlabel="epoch", title=k)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    path = out / "diagnostics_scalars.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


MIXTURE_KEYS = ("diag_gate", "client_gate", "diag_aux_ratio", "diag_w_seq", "diag_w_vis", "diag_w_sem",
                "diag_target_w_seq", "diag_target_w_vis", "diag_target_w_sem")


def _plot_mixture(rows: list[dict[str, float]], out: Path, plt) -> list[Path]:
    """mixture.png: the residual gate g (global and, federated, the clients' mean) and the expert-term
    size, and the router's weights per source, per epoch (federated runs: per round)."""
    if not any(k in r for r in rows for k in MIXTURE_KEYS):
        return []
    xlab = "round" if any("round" in r for r in rows) else "epoch"
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, label in (("diag_gate", "gate g"), ("client_gate", "gate g, mean of the round's clients"),
                       ("diag_aux_ratio", "|expert term| / |LN(seq)|")):
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        if pts:
            ax[0].plot(*zip(*pts), marker=".", label=label)
    ax[0].set(xlabel=xlab, title="residual gate")
    for src, color in (("seq", "C2"), ("vis", "C0"), ("sem", "C1")):
        for key, style in ((f"diag_w_{src}", "-"), (f"diag_target_w_{src}", "--")):
            pts = [(r["epoch"], r[key]) for r in rows if key in r]
            if pts:
                ax[1].plot(*zip(*pts), style, marker=".", color=color,
                           label=f"w_{src} ({'catalogue' if style == '-' else 'next items'})")
    ax[1].set(xlabel=xlab, ylabel="mean router weight", title="expert usage", ylim=(0, 1))
    for a in ax:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.tight_layout()
    path = out / "mixture.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
