"""The Table 1 report's pictures (matplotlib, written as PNG files beside the table)."""

import os

import matplotlib

matplotlib.use("Agg")  # files only; no display
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _zoom(ax, values, span: float) -> None:
  """y-limits from the best value down by `span` nats, or further if a curve's last
  value lies below that (every curve's end stays visible; early epochs run off)."""
  top = max(np.max(v) for v in values)
  span = max(span, 1.1 * (top - min(v[-1] for v in values)))
  ax.set_ylim(top - span, top + 0.08 * span)


def valid_curves(curves: dict, path: str, title: str, span: float = 25.0) -> str:
  """Validation ELBO vs epoch. curves: {label: [(epochs [n], elbo [n]), ...] per seed};
  the first seed is drawn solid, the others thin in the same colour."""
  fig, ax = plt.subplots(figsize=(9, 5.5))
  values = []
  for i, (label, runs) in enumerate(curves.items()):
    color = f"C{i % 10}"
    style = "--" if i >= 10 else "-"
    for j, (epochs, elbo) in enumerate(runs):
      ax.plot(epochs, elbo, style, color=color, lw=1.6 if j == 0 else 0.7,
              alpha=1.0 if j == 0 else 0.6,
              label=f"{label} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
              if j == 0 else None)
      values.append(elbo)
  if values:
    _zoom(ax, values, span)
  ax.set_xlabel("epoch")
  ax.set_ylabel("validation ELBO (nats)")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  return _save(fig, path)


def nll_vs_k(curves: dict, path: str, title: str) -> str:
  """Left: test NLL vs K; right: NLL(K) - NLL(K_max), paired over images.
  curves: {label: (ks [m], mean NLL [m], gap to K_max [m], gap SE [m])}."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
  for i, (label, (ks, nll, gap, gap_se)) in enumerate(curves.items()):
    left.plot(ks, nll, "o-", color=f"C{i}", label=label)
    right.errorbar(ks, gap, yerr=2 * np.asarray(gap_se), fmt="o-", color=f"C{i}",
                   capsize=3, label=label)
  for ax in (left, right):
    ax.set_xscale("log")
    ax.set_xlabel("importance samples K (K=1: the ELBO)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  left.set_ylabel("test NLL (nats)")
  right.set_ylabel("NLL(K) - NLL(largest K), nats (+- 2 SE)")
  right.set_yscale("symlog", linthresh=0.1)
  fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def budget(curves: dict, gains: dict, threshold: float, budget_epoch, path: str,
           title: str) -> str:
  """Pilot learning curves (left) and their per-epoch gains (right) with the threshold.
  curves: {label: (epochs, elbo)}; gains: {label: (epochs, gain per epoch)}."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  for i, (label, (epochs, elbo)) in enumerate(curves.items()):
    left.plot(epochs, elbo, color=f"C{i}", label=label)
  for i, (label, (epochs, gain)) in enumerate(gains.items()):
    right.plot(epochs, np.maximum(gain, 1e-3), color=f"C{i}", label=label)
  if curves:
    _zoom(left, [e for _, e in curves.values()], 30.0)
  right.axhline(threshold, color="k", lw=0.8, ls=":", label=f"{threshold} nats/epoch")
  for ax in (left, right):
    if budget_epoch:
      ax.axvline(budget_epoch, color="k", lw=0.8, ls="--", label=f"budget: {budget_epoch}")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
  left.set_ylabel("validation ELBO (nats)")
  right.set_ylabel("gain of the best ELBO, nats/epoch")
  right.set_yscale("log")
  fig.suptitle(title, fontsize=10)
  return _save(fig, path)
