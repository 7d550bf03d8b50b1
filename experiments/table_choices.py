"""The Table 1 report's sections on its choices: the budget (pilot learning curves), the
learning rates (the grid) and what the runs cost on this machine.

Read from the runs of `experiments/table_protocol.py`; `experiments/table_report.py`
puts them into results/mnist_table.md.
"""

import os

import numpy as np

from experiments import table_plots
from experiments import table_protocol as tp

CURVE_EPOCHS = (5, 10, 20, 30, 40, 50, 60, 80, 100)  # pilot-curve columns, where reached


def pilot_label(config: dict) -> str:
  variant = config["model"]["variant"]
  lstm = ("" if variant in tp.NO_LSTM_ROWS else ", LSTMs at lr" if
          config["optim"]["lstm_lr_divisor"] == 1 else ", LSTMs at lr/T")
  return (f"{variant} T={config['model']['num_blocks']}, lr "
          f"{config['optim']['learning_rate']:g}{lstm}, beta {config['objective']['beta']:g}")


def budget_section(p: tp.Protocol, pilot_root: str, png: str) -> list:
  curves = {pilot_label(c): (e, v, c, name)
            for name, (e, v, c) in tp.pilot_curves(pilot_root).items()}
  if not curves:
    lines = [f"### Budget: {p.num_epochs:g} epochs" if p.num_epochs else
             "### Budget: undecided", "", f"No pilot learning curves under `{pilot_root}`."]
    if os.path.exists(png):  # drawn by an earlier report from curves since lost
      lines += ["", "The picture below was drawn by an earlier report from pilot curves "
                "that are no longer there (see the Note, if any).", "",
                f"![pilot curves]({os.path.basename(png)})"]
    return lines + [""]
  vae = [k for k, v in curves.items() if v[2]["model"]["variant"] == "vae"]
  rule = tp.pilot_budget(pilot_root)
  head = [e for e in CURVE_EPOCHS if any(c[0].max() >= e for c in curves.values())]
  lines = [f"### Budget: {p.num_epochs:g} epochs for every row" if p.num_epochs else
           "### Budget: undecided", "",
           f"Rule, fixed before the table's runs: the first epoch >= {tp.BUDGET_MIN_EPOCHS} "
           f"at which the VAE's best validation ELBO gained less than {tp.BUDGET_GAIN} "
           f"nats per epoch over the previous {tp.BUDGET_WINDOW} epochs. Pilot curves "
           f"(`{pilot_root}`; constant lr, seed 0, validation ELBO every epoch):", "",
           "| pilot run | epochs | best valid ELBO at epoch " + " / ".join(map(str, head))
           + " | gain per epoch at " + " / ".join(map(str, head)) + " |", "|---|---|---|---|"]
  gains = {}
  for label, (epochs, elbo, _, name) in curves.items():
    best = {int(round(e)): v for e, v in zip(epochs, np.maximum.accumulate(elbo))}
    ge, gv = tp.window_gains(epochs, elbo)
    gains[label] = (ge, gv)
    g = dict(zip(ge.tolist(), gv))
    lines.append(f"| {label} (`{name}`) | {epochs.max():g} | "
                 + " / ".join(f"{best[e]:.2f}" if e in best else "-" for e in head) + " | "
                 + " / ".join(f"{g[e]:.2f}" if e in g else "-" for e in head) + " |")
  if rule is None:
    lines += ["", "The VAE curve has not met the rule yet." if vae else "No VAE pilot curve."]
  else:
    lines += ["", f"The VAE meets the rule at epoch **{rule}**."]
  if p.num_epochs and p.num_epochs != rule:
    lines.append(f"This table's runs use {p.num_epochs:g} epochs (`--num_epochs`), not the "
                 "rule's value.")
  table_plots.budget({k: v[:2] for k, v in curves.items()}, gains, tp.BUDGET_GAIN, rule,
                     png, "Pilot learning curves (validation ELBO) and their gains")
  return lines + ["", f"![pilot curves]({os.path.basename(png)})", ""]


def grid_section(p: tp.Protocol, root: str) -> list:
  settings = tp.grid_settings(p, "crvae")
  cols = [(s.lr, s.lstm) for s in settings]
  lines = [f"### Learning rate and LSTM rate: the best of a grid of {p.grid_epochs:g}-epoch "
           "pilots", "",
           f"Every row trained at lr in {{{', '.join(f'{x:g}' for x in p.lrs)}}} x LSTMs at "
           f"{{lr/T, lr}}, beta {p.beta:g}, seed 0, constant lr, for {p.grid_epochs:g} "
           "epochs; each row takes the setting with the highest best validation ELBO in "
           "those epochs (bold), and its seed-0 run continues that pilot to the budget. "
           "crVAE (T=8) is also trained at the best lr of its other LSTM rate (both are "
           "reported)."
           + (" crIWA takes crVAE (T=8)'s setting, so that the two differ only in the "
              "bound." if "criwa" in p.from_crvae_grid and "criwa" in p.rows else "")
           + (" " + ", ".join(tp.ROW_LABELS[r] for r in p.from_crvae_grid
                              if r != "criwa" and r in p.rows)
              + " take crVAE (T=8)'s setting instead of a grid of their own "
              "(--from_crvae_grid)." if any(r != "criwa" and r in p.rows
                                            for r in p.from_crvae_grid) else "")
           + " Short pilots favour fast starters; the learning curves below show whether "
           "the choice held to the budget.", "",
           "| row | " + " | ".join(f"lr {lr:g}, LSTMs at {tp.LSTM_LABELS[l]}"
                                   for lr, l in cols) + " |",
           "|---|" + "---|" * len(cols)]
  for row in tp.grid_rows(p):
    scores = tp.grid_scores(p, root, row)
    choice = tp.grid_choice(p, root, row)
    cells = []
    for lr, lstm in cols:
      s = next((x for x in tp.grid_settings(p, row)
                if x.lr == lr and (x.lstm == lstm or x.lstm is None)), None)
      if s is None or (s.lstm is None and lstm == "full"):
        cells.append("")
        continue
      failed = tp.read_job(tp.workdir(root, s)).get("failed")
      text = "pending" if s not in scores else f"{scores[s]:.2f}"
      if failed:
        text += f" (stopped at epoch {failed['epoch']:g}: non-finite)"
      cells.append(f"**{text}**" if s == choice else text)
    lines.append(f"| {tp.ROW_LABELS[row]} | " + " | ".join(cells) + " |")
  return lines + [""]


def cost_section(p, root: str, pilot_root: str) -> list:
  epoch_s, eval_sps = tp.measured_rates(root, pilot_root)
  if not epoch_s and not eval_sps:
    return []
  lines = ["## Cost on this machine", "",
           "Wall time of the finished runs (each segment includes start-up and "
           "compilation): per row, the median over its segments of each segment's own "
           "rate. Where a row has segments on this machine's CPU model (its machine line, "
           "under Runs), only those count: the other model may be much faster or slower. "
           "Of those, where some training segments started on a quiet machine (load "
           f"average <= {tp.busy_load():g}), only those count; otherwise other work shared "
           "the CPU (see the load in Runs). A wall time also includes any time the runner "
           "was paused (SIGSTOP, e.g. for a benchmark on the same CPU), which the load "
           "average does not show; the median keeps a minority of such segments from "
           "counting, but where most were slowed these rates are low and the times high.",
           "",
           f"| row | s per training epoch | IS decoder samples/s | K={p.num_samples} on "
           "all 10,000 test images, min |", "|---|---|---|---|"]
  for row in tp.TABLE_ORDER:
    if row in epoch_s or row in eval_sps:
      sps = eval_sps.get(row)
      lines.append(f"| {tp.ROW_LABELS[row]} | {epoch_s.get(row, float('nan')):.0f} | "
                   + (f"{sps:.0f} | {p.num_samples * 10_000 / sps / 60:.0f} |" if sps
                      else "- | - |"))
  return lines + [""]
