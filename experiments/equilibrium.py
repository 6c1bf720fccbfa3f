r"""Does phi_theta recover the equilibrium manifold p_st(y)? A test on a source where it is exact.

    python -m experiments.equilibrium                  # P in {4,8,16,32,64}, 500k tokens each

The paper's theory: if the fast dynamics are a linear generator Q(y), the equilibrium manifold
x = phi(y) is the master equation's stationary distribution p_st(y), and the learned phi_theta is a
variational approximation of it. Here the data come from exactly such a system
(`fastslow_jax.data.ctmc`: a CTMC over V states with Q(y) = Q0 + y Q1, observed at unit time
steps, y a slow sinusoid), so p_st(y) is known exactly for every block.

For each P a coupled model trains on this source through `fastslow_jax.train` (data kind `ctmc`:
fresh windows, read in order), stopping with a checkpoint at each probe step;
each probe restores that checkpoint and maps phi_theta's output at every complete block j (every
slow layer) to a distribution over the V states by a softmax-regression read-out
fitted on held-out windows, and scored on other windows by the total-variation distance to
pbar_j, the mean of p_st(y_t) over the block's tokens. Baselines: the uniform distribution, the
best constant distribution, the block's empirical token histogram, the same read-out from the
pooled layer input (a linear image of the block histogram at layer 0), and the drift floor
TV(p_st(y at the block's end), pbar_j). Report: experiments/reports/equilibrium/report.md
(`--report_only` re-renders it from its results.json).
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import time
from typing import Any, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import optimize

from experiments import grid, repo, report, stats
from experiments.probes import apply_jitted
from fastslow_jax import models, restoring, train
from fastslow_jax.data import ctmc

DEFAULT_PS = (4, 8, 16, 32, 64)
DEFAULT_SOURCE = dict(vocab_size=16, levels=256, period_range=(384.0, 1536.0), rate=1.0,
                      concentration=0.5, seed=0)
DEFAULT_SET = {'model.seq_len': 256, 'batch_size': 8}


# --------------------------------------------------------------------------- read-out


def fit_readout(features: np.ndarray, targets: np.ndarray, l2: float = 1e-3,
                maxiter: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Softmax regression with soft targets: argmin_W,b mean_i CE(targets_i, softmax(z_i W + b))
  + l2 |W|^2, on standardised features z. Returns (W, b, mean, std)."""
  mean, std = features.mean(0), features.std(0) + 1e-6
  z = (features - mean) / std
  n, d = z.shape
  v = targets.shape[1]

  def loss(theta):
    W, b = theta[:d * v].reshape(d, v), theta[d * v:]
    logits = z @ W + b
    logits -= logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    value = -(targets * logp).sum() / n + l2 * (W * W).sum()
    grad_logits = (np.exp(logp) - targets) / n
    grad = np.concatenate([(z.T @ grad_logits + 2 * l2 * W).ravel(), grad_logits.sum(0)])
    return value, grad

  init = np.concatenate([np.zeros(d * v), np.log(targets.mean(0) + 1e-9)])
  res = optimize.minimize(loss, init, jac=True, method='L-BFGS-B', options={'maxiter': maxiter})
  return res.x[:d * v].reshape(d, v), res.x[d * v:], mean, std


def predict_readout(params, features: np.ndarray) -> np.ndarray:
  W, b, mean, std = params
  logits = ((features - mean) / std) @ W + b
  logits -= logits.max(1, keepdims=True)
  p = np.exp(logits)
  return p / p.sum(1, keepdims=True)


def tv(p: np.ndarray, q: np.ndarray) -> float:
  """Mean total-variation distance between rows of p and q."""
  return float(0.5 * np.abs(p - q).sum(-1).mean())


# --------------------------------------------------------------------------- probe data


class ProbeSet:
  """Held-out windows with their exact per-block targets: `fit` windows train the read-out,
  `test` windows score it."""

  def __init__(self, source: ctmc.CTMCSource, *, seq_len: int, P: int, num: int, seed: int):
    tokens, level = source.sample(np.random.default_rng([seed, 7, P]), num, seq_len)
    nb = seq_len // P
    self.tokens = tokens
    self.pbar = source.p_st[level].reshape(num, nb, P, -1).mean(2).reshape(num * nb, -1)
    self.hist = np.eye(source.V)[tokens].reshape(num, nb, P, -1).mean(2).reshape(num * nb, -1)
    self.p_end = source.p_st[level.reshape(num, nb, P)[:, :, -1]].reshape(num * nb, -1)


def _slow_features(model, tokens):
  out = {}
  for i, parts in enumerate(model.forward(tokens)[1]):
    if 'phi' in parts:
      out[f'phi_{i}'], out[f'pooled_{i}'] = parts['phi'], parts['pooled']
  return out


def features(model, tokens: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
  """Per slow layer i: 'phi_i' (phi_theta's output at every block) and 'pooled_i' (the pooled
  layer input), each [num * blocks, d_model]."""
  parts = [apply_jitted(model, _slow_features, jnp.asarray(tokens[i:i + batch]))
           for i in range(0, len(tokens), batch)]
  return {k: np.concatenate([np.asarray(p[k], np.float64) for p in parts]).reshape(
      -1, parts[0][k].shape[-1]) for k in parts[0]}


def probe(model, fit: ProbeSet, test: ProbeSet, only: Sequence[str] | None = None
          ) -> dict[str, float]:
  """TV of the read-out from each feature set (fitted on `fit`, scored on `test`)."""
  f_fit, f_test = features(model, fit.tokens), features(model, test.tokens)
  return {name: tv(predict_readout(fit_readout(f_fit[name], fit.pbar), f_test[name]), test.pbar)
          for name in f_fit if only is None or any(name.startswith(o) for o in only)}


def baselines(fit: ProbeSet, test: ProbeSet) -> dict[str, float]:
  V = test.pbar.shape[1]
  return {
      'uniform': tv(np.full_like(test.pbar, 1 / V), test.pbar),
      'best constant': tv(np.broadcast_to(fit.pbar.mean(0), test.pbar.shape), test.pbar),
      'block histogram': tv(test.hist, test.pbar),
      'histogram read-out': tv(predict_readout(fit_readout(fit.hist, fit.pbar), test.hist),
                               test.pbar),
      'drift floor': tv(test.p_end, test.pbar),
  }


# --------------------------------------------------------------------------- one P


def ctmc_data(config, source: ctmc.CTMCSource, *, num_train: int, seed: int, P: int,
              num_val: int = 64) -> None:
  """Points `config.data` at the `ctmc` source with `source`'s parameters: fresh windows of
  seq_len + 1 tokens, split s drawn from numpy's default_rng([seed, s, P]) (1 train, read in
  order; 2 validation)."""
  config.data.update(
      kind='ctmc', vocab_size=source.V, source_seed=source.seed, ctmc_levels=source.levels,
      ctmc_period_min=float(source.period_range[0]), ctmc_period_max=float(source.period_range[1]),
      ctmc_rate=float(source.rate), ctmc_concentration=float(source.concentration),
      ctmc_window_seed=seed, ctmc_window_salt=P, num_train_windows=num_train,
      num_val_windows=num_val, shuffle=False)


def validation_loss(restored: restoring.Restored) -> float:
  """Mean next-token loss over every validation window of the run's source, scored in one batch
  (the float32 sum and ratio of the run's eval step, as this report has always computed it)."""
  setup = restored.setup
  dataset = restored.source.open('validation', seq_len=restored.config.model.seq_len)
  windows = np.stack([dataset[i] for i in range(len(dataset))])
  with setup.activate():
    total, count = setup.compile_eval_step()(restored.params, setup.global_batch(windows))
  return float(total / count)


def oracle_loss(source: ctmc.CTMCSource, *, seq_len: int, seed: int, P: int,
                num_val: int = 64) -> float:
  """The loss of a predictor told y, on the validation windows of `ctmc_data`."""
  tokens, level = source.sample(np.random.default_rng([seed, 2, P]), num_val, seq_len + 1)
  return float(-source.oracle_log_probs(tokens, level).mean())


def _probe_curve(config, workdir: pathlib.Path, fit: ProbeSet, test: ProbeSet,
                 probe_at: Sequence[int], devices, log) -> list[dict[str, Any]]:
  """Trains up to each probe step (a checkpoint), then probes that checkpoint."""
  curve = []
  for step in probe_at:
    train.train(config, str(workdir), devices=devices, stop_at_step=step)
    restored = restoring.restore(str(workdir), step, devices=devices)
    with restored.setup.activate():
      record = {'val_loss': validation_loss(restored),
                'tv': probe(restored.model(), fit, test),
                'gate': models.gate_values(restored.params)}
    curve.append({'step': step, **record})
    log(f'P={config.model.P} step {step}: val {record["val_loss"]:.4f}, TV '
        + ', '.join(f'{k} {v:.3f}' for k, v in record['tv'].items()))
  return curve


def train_one(P: int, *, source: ctmc.CTMCSource, size: str, tokens: int, seed: int,
              overrides: dict[str, Any], probes: int, probe_windows: int, workdir: pathlib.Path,
              devices=None, log=print) -> dict[str, Any]:
  """Trains the coupled model at this P on the CTMC source, probing phi_theta as it goes."""
  config = grid.make_config('coupled', size=size, P=P, seed=seed, tokens=tokens,
                            overrides={**overrides, 'model.vocab_size': source.V})
  T, B, steps = config.model.seq_len, config.batch_size, config.total_steps
  ctmc_data(config, source, num_train=steps * B, seed=seed, P=P)  # Each window read once.
  config.eval_batches = 64 // B
  key = {'config': json.loads(config.to_json_best_effort()), 'source': repr(vars_of(source)),
         'probes': probes, 'probe_windows': probe_windows}
  result_path = workdir / grid.RESULT_FILE
  if result_path.exists():
    old = json.loads(result_path.read_text())
    if old.get('key') == key:
      log(f'P={P}: reused ({result_path})')
      return old
  shutil.rmtree(workdir, ignore_errors=True)
  commit, start = repo.git_commit(), time.perf_counter()
  fit = ProbeSet(source, seq_len=T, P=P, num=probe_windows, seed=seed)
  test = ProbeSet(source, seq_len=T, P=P, num=probe_windows, seed=seed + 1000)
  probe_at = sorted({0, steps, *map(int, np.geomspace(max(1, steps // 50), steps,
                                                      max(1, probes - 1)).astype(int))})
  curve = _probe_curve(config, workdir, fit, test, probe_at, devices, log)
  train_s, _ = grid.train_seconds(grid.read_metrics(workdir))
  result = {'key': key, 'P': P, 'steps': steps, 'tokens': steps * B * T,
            'oracle_loss': oracle_loss(source, seq_len=T, seed=seed, P=P),
            'baselines': baselines(fit, test), 'curve': curve, 'train_s': train_s,
            'wall_s': time.perf_counter() - start, 'commit': commit}
  result_path.write_text(json.dumps(result, indent=1) + '\n')
  return result


def vars_of(source: ctmc.CTMCSource) -> dict[str, Any]:
  return {'V': source.V, 'levels': source.levels, 'period_range': list(source.period_range),
          'seed': source.seed, 'Q0': np.round(source.Q0, 12).tolist()}


# --------------------------------------------------------------------------- report


def _final(r: dict[str, Any]) -> dict[str, float]:
  return r['curve'][-1]['tv']


def _layers(results) -> list[str]:
  return sorted({k for r in results for k in _final(r) if k.startswith('phi_')},
                key=lambda k: int(k.split('_')[1]))


def _listed(Ps: Sequence[int], values: dict[int, float]) -> str:
  return ', '.join(f'{values[P]:.3f}' for P in Ps)


def _against_baselines(Ps, best, b, pooled) -> list[str]:
  """Where the trained read-out is below the histogram read-out and the pooled input."""
  beats = [P for P in Ps if best[P] < b[P]['histogram read-out']]
  below = all(best[P] < b[P]['best constant'] for P in Ps)
  adds = [P for P in Ps if best[P] < pooled[P]]
  return [
      ('It is lower than the same read-out applied to the block\'s own token histogram at P in '
       f'{{{", ".join(map(str, beats))}}}' if beats else 'It is never lower than the same '
       'read-out applied to the block\'s own token histogram')
      + f' (histogram read-out: {_listed(Ps, {P: b[P]["histogram read-out"] for P in Ps})}), and '
      f'{"below" if below else "not always below"} the best constant distribution '
      f'({np.mean([b[P]["best constant"] for P in Ps]):.3f}).',
      ('Slow attention + phi_theta reach a lower TV than their own pooled input (best layer) at '
       f'P in {{{", ".join(map(str, adds))}}}' if adds else 'Slow attention + phi_theta never '
       'reach a lower TV than their own pooled input (best layer)')
      + f' (pooled input: {_listed(Ps, pooled)}).']


def conclusion(results: list[dict[str, Any]]) -> str:
  """A short paragraph computed from the final and initial probes and the baselines."""
  layers = _layers(results)
  best = {r['P']: min(_final(r)[k] for k in layers) for r in results}
  best_layer = {r['P']: min(layers, key=lambda k: _final(r)[k]) for r in results}
  init = {r['P']: min(r['curve'][0]['tv'][k] for k in layers) for r in results}
  pooled = {r['P']: min(_final(r)[k.replace('phi_', 'pooled_')] for k in layers) for r in results}
  b = {r['P']: r['baselines'] for r in results}
  Ps = sorted(best)
  out = [
      'After training, the read-out from phi_theta reaches a mean TV to p_st of '
      + ', '.join(f'{best[P]:.3f} (P={P}, {best_layer[P].replace("phi_", "layer ")})' for P in Ps)
      + f'; at initialisation (random phi_theta) it was {_listed(Ps, init)}, so training changes '
      f'it by {np.mean([best[P] - init[P] for P in Ps]):+.3f} on average (negative: closer to '
      'p_st).', *_against_baselines(Ps, best, b, pooled)]
  trend = np.polyfit(np.log2(Ps), [best[P] for P in Ps], 1)[0] if len(Ps) > 1 else math.nan
  drift = [b[P]['drift floor'] for P in Ps]
  out.append(
      f'As P grows from {Ps[0]} to {Ps[-1]} (eps = 1/P from {1 / Ps[0]:.3f} to {1 / Ps[-1]:.3f}), '
      f'the trained TV changes by {trend:+.3f} per doubling of P (least-squares slope) and the raw '
      f'histogram TV falls from {b[Ps[0]]["block histogram"]:.3f} to '
      f'{b[Ps[-1]]["block histogram"]:.3f} (more tokens per block), while the drift floor (y '
      f'moving within a block) rises from {drift[0]:.4f} to {drift[-1]:.4f}: eps -> 0 in the '
      'model is bounded by the data\'s own slow timescale, not only by P.')
  out.append(ONE_SEED)
  return ' '.join(out)


ONE_SEED = (
    f'Each P is one training run (one seed), each TV a mean over held-out blocks: the comparisons '
    f'above are measured, not tested against seed-to-seed noise, so in the words of '
    f'`experiments/stats.py` every one of them is {stats.UNDETERMINED}.')


def plot_training(results, out_dir: pathlib.Path) -> str:
  """tv_vs_training.png: the read-out's TV per layer against training tokens, per P."""
  layers = _layers(results)
  cmap = report.plt.get_cmap('viridis')
  fig, axes = report.new_figure(len(layers), 1, width=4.8, height=3.6)
  for li, layer in enumerate(layers):
    ax = axes[0][li]
    for i, r in enumerate(results):
      recs = r['curve']
      x = [max(m['step'], 0.5) * r['tokens'] / r['steps'] for m in recs]
      color = cmap(i / max(1, len(results) - 1))
      ax.plot(x, [m['tv'][layer] for m in recs], marker='o', ms=3, color=color,
              label=f'P={r["P"]}')
      ax.axhline(r['baselines']['histogram read-out'], color=color, ls=':', lw=0.8)
    ax.axhline(np.mean([r['baselines']['best constant'] for r in results]), color='k', ls='--',
               lw=0.8, label='best constant')
    ax.set_xscale('log')
    report.token_axis(ax)
    ax.set_xlabel('training tokens (first point: init)')
    ax.set_ylabel('mean TV(read-out(phi), p_st)')
    ax.set_title(f'phi_theta, {layer.replace("phi_", "layer ")} (dotted: histogram read-out)',
                 fontsize=9)
    ax.legend(fontsize=7)
  return report.save_figure(fig, out_dir / 'tv_vs_training.png')


BASELINE_STYLES = {'histogram read-out': ('tab:red', ':'), 'block histogram': ('tab:brown', ':'),
                   'best constant': ('k', '--'), 'uniform': ('tab:gray', '--'),
                   'drift floor': ('tab:purple', '-.')}


def plot_P(results, out_dir: pathlib.Path) -> str:
  """tv_vs_P.png: the final TVs and every baseline against P."""
  layers, Ps = _layers(results), [r['P'] for r in results]
  fig, axes = report.new_figure(1, 1, width=7.6, height=3.8)
  ax = axes[0][0]
  for layer in layers:
    name = layer.replace('phi_', 'layer ')
    ax.plot(Ps, [_final(r)[layer] for r in results], marker='o', lw=2,
            label=f'phi_theta trained, {name}')
    ax.plot(Ps, [r['curve'][0]['tv'][layer] for r in results], marker='x', ls='--', lw=1,
            label=f'phi_theta at init, {name}')
  for layer in layers:
    ax.plot(Ps, [_final(r)[layer.replace('phi_', 'pooled_')] for r in results], marker='s',
            ms=3, ls='-.', label=f'pooled input, {layer.replace("phi_", "layer ")} (trained)')
  for name, (color, ls) in BASELINE_STYLES.items():
    ax.plot(Ps, [r['baselines'][name] for r in results], color=color, ls=ls, label=name)
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xticks(Ps, [str(P) for P in Ps])
  ax.set_xlabel('P (eps = 1/P)')
  ax.set_ylabel('mean TV to p_st (held-out blocks)')
  ax.legend(fontsize=6, loc='center left', bbox_to_anchor=(1.02, 0.5))
  return report.save_figure(fig, out_dir / 'tv_vs_P.png')


SOURCE = (
    '**Source** (`fastslow_jax/data/ctmc.py`). A continuous-time Markov chain over V={V} states '
    'with generator Q(y) = Q0 + y·Q1 (Q0 and Q0+Q1 valid generators, mean exit rate 1), observed '
    'at unit time steps: x_t ~ expm(Q(y_t))[x_(t-1), :]. y_t = (1 + sin(2πt/L + phase))/2 with L '
    'log-uniform in [{low:g}, {high:g}] tokens per window, quantised to {levels} levels. p_st(y) '
    'is the exact null vector of Q(y)^T. Fast relaxation time (1 / smallest spectral gap over y): '
    '{tau:.2f} tokens; TV(p_st(0), p_st(1)) = {tv_range:.3f}.\n')
MODEL = (
    '**Model and training.** Coupled arm, d_model={m.d_model}, {m.num_layers} layers (slow path in '
    'every layer), T={m.seq_len}, batch {c.batch_size}, {steps} steps = {tokens:,} tokens per P, '
    'AdamW lr {c.optim.lr:g} (`fastslow_jax.train` on fresh CTMC windows read in order, stopped '
    'with a checkpoint at every probe step).\n')
PROBE = (
    '**Probe.** At each probe step, phi_theta(SlowAttn(Pool(x))) at every complete block j of {n} '
    'held-out windows (per slow layer) is mapped to a distribution over the V states by a '
    'softmax-regression read-out (standardised features, L2 1e-3, L-BFGS) fitted on those '
    'windows; the score is the mean total-variation distance between its prediction on {n} other '
    'windows and pbar_j = mean of p_st(y_t) over the block\'s tokens. Baselines: uniform; the best '
    'constant (mean pbar of the fit windows); the block\'s own token histogram; the same read-out '
    'applied to that histogram; "pooled input" (the read-out from Pool(x) of a layer, before slow '
    'attention and phi_theta: at layer 0 a linear image of the histogram); the drift floor '
    'TV(p_st(y at the block end), pbar_j). Validation loss is on 64 fresh windows; the oracle loss '
    'is that of a predictor told y_t: {oracle:.4f} nats.\n')
DEPARTURES = (
    '- **The trained block is not a linear generator.** The theorem assumes fast dynamics '
    'dx/dt = Q(y)^T x acting on a probability vector; the network\'s fast path is attention + '
    'MLP on d_model-dimensional embeddings. Only the data satisfy the assumption here.\n'
    '- **phi_theta does not output a distribution.** It maps the slow state to d_model={d_model} '
    'dimensions that are added to the residual stream; comparing it with p_st needs a fitted '
    'read-out, so every TV above measures network + read-out. The read-out is only '
    'softmax-linear, so the numbers bound from above what phi_theta encodes linearly.\n'
    '- **phi_theta is never trained towards p_st.** Its only signal is the next-token loss '
    'through the gate g (final gates per layer: {gates}); any resemblance to p_st is a '
    'by-product.\n'
    '- **The slow input is a pooled, normalised embedding, not y.** At layer 0, Pool(x) is the '
    'block mean of RMS-normalised token embeddings, i.e. a linear image of the block\'s token '
    'histogram; deeper layers pool fast-path states that already mix tokens across blocks. y '
    'itself is never observed.\n'
    '- **phi is not instantaneous.** Slow attention lets block j use all blocks <= j (a memory '
    'over the past), whereas the equilibrium manifold x = phi(y) depends on the current y only.\n'
    '- **eps = 1/P is not the data\'s timescale ratio.** The source separates timescales by its '
    'relaxation time ({tau:.2f} tokens) vs the drift period of y (>= {low:g} tokens); P only sets '
    'how many tokens a slow step averages. Larger P lowers histogram noise but lets y drift '
    'within a block (the drift floor).\n'
    '- **Discrete observation and quantised y.** Tokens are the chain sampled once per unit time '
    '(expm(Q)), and y takes {levels} grid values.\n')
BASELINES = ('histogram read-out', 'block histogram', 'best constant', 'uniform', 'drift floor')


def results_table(results, seq_len: int) -> str:
  """The final probe per P: TV per layer, at init, of the pooled input, baselines, loss, gates."""
  layers = _layers(results)
  pooled = [k.replace('phi_', 'pooled_') for k in layers]
  header = (['P', 'eps', 'blocks / window'] + [f'phi {k.replace("phi_", "layer ")}' for k in layers]
            + ['phi at init (best layer)']
            + [f'pooled input {k.replace("pooled_", "layer ")}' for k in pooled]
            + list(BASELINES) + ['val loss', 'gates'])
  rows = []
  for r in results:
    f, b0 = _final(r), r['baselines']
    rows.append([r['P'], f'{1 / r["P"]:.4f}', seq_len // r['P']]
                + [f'{f[k]:.3f}' for k in layers]
                + [f'{min(r["curve"][0]["tv"][k] for k in layers):.3f}']
                + [f'{f[k]:.3f}' for k in pooled] + [f'{b0[k]:.3f}' for k in BASELINES]
                + [f'{r["curve"][-1]["val_loss"]:.4f}', report.gates_text(r['curve'][-1]['gate'])])
  return report.markdown_table(header, rows)


def trajectories_table(results) -> str:
  """A row per probe of every P: step, validation loss, TV per layer."""
  layers = _layers(results)
  rows = [[r['P'], c['step'], f'{c["val_loss"]:.4f}'] + [f'{c["tv"][k]:.3f}' for k in layers]
          for r in results for c in r['curve']]
  return report.markdown_table(['P', 'step', 'val loss'] + [f'TV {k}' for k in layers], rows)


def render(numbers: dict[str, Any], out_dir: pathlib.Path, rerendered: bool = False
           ) -> pathlib.Path:
  """report.md, its plots and results.json from the numbers alone (results.json's content)."""
  results, src = numbers['P'], numbers['source']
  config = ml_collections.ConfigDict(numbers['config'])
  gates = '; '.join(f'P={r["P"]}: ' + report.gates_text(r['curve'][-1]['gate']) for r in results)
  lines = [
      report.header('phi_theta vs the exact equilibrium manifold p_st(y) (equilibrium)',
                    numbers['provenance'], rerendered),
      SOURCE.format(**src), MODEL.format(m=config.model, c=config, steps=results[0]['steps'],
                                         tokens=results[0]['tokens']),
      PROBE.format(n=numbers['probe_windows'],
                   oracle=np.mean([r['oracle_loss'] for r in results])),
      '## Conclusion\n', conclusion(results) + '\n',
      '## Where the trained network departs from the theorem\n',
      DEPARTURES.format(d_model=config.model.d_model, gates=gates, tau=src['tau'],
                        low=src['low'], levels=src['levels']),
      '## Results (final probe)\n', results_table(results, config.model.seq_len),
      'All entries but the last two are mean TV distances to p_st on held-out blocks (lower is '
      'better).\n',
      '## Plots\n', f'![TV vs training]({plot_training(results, out_dir)})\n',
      f'![TV vs P]({plot_P(results, out_dir)})\n',
      '## Probe trajectories\n', trajectories_table(results),
      f'Run directories (checkpoints at the probe steps, metrics.jsonl): `{numbers["root"]}`.\n']
  return report.write_report(out_dir, '\n'.join(lines), numbers)


def source_facts(source: ctmc.CTMCSource) -> dict[str, Any]:
  """What the report says of the source."""
  return {'V': source.V, 'low': source.period_range[0], 'high': source.period_range[1],
          'levels': source.levels + 1, 'tau': source.relaxation_time(),
          'tv_range': float(0.5 * np.abs(source.p_st[0] - source.p_st[-1]).sum())}


def write(results, *, source: ctmc.CTMCSource, root: pathlib.Path, out_dir: pathlib.Path,
          command: str, probe_windows: int) -> pathlib.Path:
  """The numbers results.json keeps, then the report from them."""
  out_dir.mkdir(parents=True, exist_ok=True)
  numbers = {
      'provenance': report.provenance(command, results, sum(r['wall_s'] for r in results)),
      'config': results[0]['key']['config'], 'source': source_facts(source),
      'probe_windows': probe_windows, 'root': repo.display_path(root),
      'P': [{k: v for k, v in r.items() if k != 'key'} for r in results]}
  return render(numbers, out_dir)


def run(*, name: str = 'equilibrium', Ps: Sequence[int] = DEFAULT_PS, tokens: int = 500_000,
        size: str = 'cpu', seed: int = 0, probes: int = 8, probe_windows: int = 256,
        source_kwargs: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
        workdir_root: str | None = None, out_dir: str | None = None, command: str = '',
        devices=None, log=print) -> pathlib.Path:
  """Trains and probes one coupled model per P; writes the report; returns its path."""
  source = ctmc.CTMCSource(**{**DEFAULT_SOURCE, **(source_kwargs or {})})
  overrides = dict(DEFAULT_SET if overrides is None else overrides)
  root, out = repo.runs_root(name, workdir_root), repo.report_dir(name, out_dir)
  results = [train_one(P, source=source, size=size, tokens=tokens, seed=seed,
                       overrides=overrides, probes=probes, probe_windows=probe_windows,
                       workdir=root / f'P{P}', devices=devices, log=log) for P in sorted(Ps)]
  path = write(results, source=source, root=root, out_dir=out, command=command,
               probe_windows=probe_windows)
  log(f'Wrote {path}')
  return path


def main():
  from absl import flags
  f = flags.FLAGS
  if not report.start(f.name, f, render):
    return
  run(name=f.name, Ps=[int(p) for p in f.Ps], tokens=grid.parse_tokens(f.tokens), size=f.size,
      seed=f.seed, probes=f.probes, probe_windows=f.probe_windows,
      source_kwargs={'vocab_size': f.vocab_size, 'seed': f.source_seed},
      overrides=grid.parse_overrides(f.set), workdir_root=f.workdir_root, out_dir=f.out_dir,
      command=report.command_line('experiments.equilibrium'))


def define_flags():
  from absl import flags
  flags.DEFINE_list('Ps', [str(p) for p in DEFAULT_PS], 'Pooling periods (must divide T).')
  flags.DEFINE_integer('seed', 0, 'Model seed (init, training and probe windows).', lower_bound=0)
  flags.DEFINE_integer('probes', 8, 'Probe points per run (init and the end included).',
                       lower_bound=2)
  flags.DEFINE_integer('probe_windows', 256, 'Windows to fit the read-out on (and as many to '
                       'score it on).', lower_bound=1)
  flags.DEFINE_integer('vocab_size', DEFAULT_SOURCE['vocab_size'], 'States of the CTMC.',
                       lower_bound=2)
  flags.DEFINE_integer('source_seed', DEFAULT_SOURCE['seed'], 'Seed of the generators Q0, Q1.',
                       lower_bound=0)
  grid.define_grid_flags('equilibrium', tokens_help='Training tokens per P.', timing=False,
                         set_default=[f'{k}={v}' for k, v in DEFAULT_SET.items()])
  flags.adopt_module_key_flags(grid)  # Listed in --help beside this module's own.


if __name__ == '__main__':
  from fastslow_jax import cli
  cli.run(main, define_flags)
