"""What every report is made of: its header (command, where and when its runs were trained, the
commit they were trained at and the one the report was written at), Markdown tables, number
formats, plots and the files report.md and results.json."""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from experiments import grid, probes, repo, stats  # noqa: E402
from fastslow_jax.errors import UsageError  # noqa: E402

COLORS = {'dense': 'tab:gray', 'coupled': 'tab:blue', 'gate_frozen': 'tab:orange',
          'slow_frozen': 'tab:green'}


# --------------------------------------------------------------------------- numbers


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (nan for fewer than two values)."""
  v = np.asarray(values, float)
  return float(v.mean()) if len(v) else math.nan, float(v.std(ddof=1)) if len(v) > 1 else math.nan


def fmt(x: float | None, digits: int = 4, sign: bool = False) -> str:
  """A number with `digits` decimals ('n/a' for None or nan)."""
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return 'n/a'
  return f'{x:+.{digits}f}' if sign else f'{x:.{digits}f}'


def fmt_pm(values: Sequence[float], digits: int = 4) -> str:
  """'mean ± sample std' (the mean alone for one value)."""
  m, s = mean_std(values)
  return f'{fmt(m, digits)} ± {fmt(s, digits)}' if len(values) > 1 else fmt(m, digits)


def fmt_seconds(s: float) -> str:
  """Seconds as s, min or h."""
  return f'{s:.0f} s' if s < 120 else f'{s / 60:.1f} min' if s < 7200 else f'{s / 3600:.1f} h'


def gates_text(gates: Mapping[str, float]) -> str:
  """Gates per layer, '+0.013, -0.001' ('—' without gates)."""
  return ', '.join(f'{v:+.3f}' for v in gates.values()) or '—'


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A Markdown table with a blank line's worth of ending."""
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def comparisons_table(comparisons: Mapping[str, stats.Comparison]) -> str:
  """A row per comparison: paired mean and interval, tests, power, verdict."""
  return markdown_table(stats.TABLE_HEADER, stats.table_rows(comparisons))


# --------------------------------------------------------------------------- header


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
  """The command that ran this process, e.g. 'python -m experiments.p_sweep --seeds=2'."""
  argv = sys.argv[1:] if argv is None else argv
  return ' '.join(['python', '-m', module, *map(shlex.quote, argv)])


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')


def provenance(command: str, results: Sequence[dict[str, Any]] = (),
               elapsed_s: float | None = None) -> dict[str, Any]:
  """Where, when and at which commit(s) a report's runs were made (kept in results.json): the
  commits the runs recorded, or this process's commit for a report measured here."""
  import jax
  trained_at = grid.trained_at(results) if results else f'commit `{repo.git_commit()}`'
  return {'command': command, 'date': _now(), 'trained_at': trained_at,
          'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
          'cpu_cores': os.cpu_count(), 'took_s': elapsed_s}


HEADER = """# {title}

```
{command}
```

Runs finished by {date} on {device} ({cpu_cores} CPU cores){took}, trained at {trained_at}. \
Report written {now} at commit `{written_at}`{how}. Regenerate with the command above \
(finished runs in its workdir root are reused; delete them to start from scratch); \
`--report_only` re-renders the report from its results.json.
"""


def header(title: str, prov: Mapping[str, Any], rerendered: bool = False) -> str:
  """Title, then the exact command, where and when its runs were made and at which commit(s),
  and the commit the report was written at."""
  took = f' · took {fmt_seconds(prov["took_s"])}' if prov.get('took_s') is not None else ''
  return HEADER.format(title=title, took=took, now=_now(), written_at=repo.git_commit(),
                       how=' from results.json (`--report_only`)' if rerendered else '',
                       **{k: v for k, v in prov.items() if k != 'took_s'})


# --------------------------------------------------------------------------- runs


def runs_table(results: list[dict[str, Any]]) -> str:
  """A Markdown row per run: final validation loss, gates, slow share, step time, wall time."""
  rows = [[r['name'], fmt(r['val_loss']), gates_text(r['gate']),
           fmt(probes.max_share(r), 3) if r['share'] else '—', f'{r["step_s"] * 1e3:.0f} ms',
           fmt_seconds(r['wall_s'])] for r in results]
  return markdown_table(['run', 'val loss', 'gate', 'slow share', 'step', 'wall'], rows)


def runs_section(results: list[dict[str, Any]], root: str) -> str:
  """A report's closing section: a row per run and where the run directories are."""
  return (f'## Runs\n\n{runs_table(results)}\nRun directories (config.json, metrics.jsonl, '
          f'checkpoints): `{root}`.\n')


def by_seed(results: Sequence[dict[str, Any]], **match) -> dict[int, float]:
  """{seed: final validation loss} of the runs whose fields equal `match`."""
  return {r['seed']: r['val_loss'] for r in results
          if all(r[k] == v for k, v in match.items())}


def grouped_comparisons(runs: Sequence[dict[str, Any]], key: str,
                        pairs: Mapping[str, Sequence[tuple[str, str]]]
                        ) -> dict[str, dict[str, stats.Comparison]]:
  """Per group, a − b for each pair (a, b) of values of the runs' `key` (arm, label), paired
  over seeds; all groups' comparisons corrected together as one family."""
  paired = {(group, f'{a} − {b}'): stats.paired(by_seed(runs, group=group, **{key: a}),
                                                by_seed(runs, group=group, **{key: b}))
            for group, group_pairs in pairs.items() for a, b in group_pairs}
  out = {group: {} for group in pairs}
  for (group, name), c in stats.family(paired).items():
    out[group][name] = c
  return out


# --------------------------------------------------------------------------- plots


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6):
  """(figure, axes[row][col]) with panels of width x height inches."""
  fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
  return fig, axes


def token_axis(ax) -> None:
  """Training tokens on the x axis, labelled 100k, 1M, ..."""
  ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=''))
  ax.set_xlabel('training tokens')


def save_figure(fig, path: str | os.PathLike) -> str:
  """Writes a PNG; returns its file name (for a Markdown link beside it)."""
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return pathlib.Path(path).name


def kept_figure(out_dir: pathlib.Path, name: str) -> str | None:
  """A plot drawn from the runs' metrics.jsonl, kept as it is when re-rendering (None: absent)."""
  return name if (out_dir / name).exists() else None


# --------------------------------------------------------------------------- files


def write_report(out_dir: str | os.PathLike, text: str, results: Any = None) -> pathlib.Path:
  """Writes out_dir/report.md (and results.json with the numbers behind it)."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / 'report.md'
  path.write_text(text.rstrip() + '\n')
  if results is not None:
    (out_dir / 'results.json').write_text(json.dumps(results, indent=1, default=str) + '\n')
  return path


def load_results(out_dir: str | os.PathLike) -> dict[str, Any]:
  """A report's results.json, for --report_only; a one-line UsageError where there is none."""
  path = pathlib.Path(out_dir) / 'results.json'
  if not path.exists():
    raise UsageError(f'--report_only needs {path}: run the experiment once without it.')
  return json.loads(path.read_text())


def start(name: str, f, render: Callable[..., Any]) -> bool:
  """The start every experiment's main() shares: with --report_only, re-renders report `name`
  from its results.json alone and returns False (nothing to train); otherwise turns on the
  grid's persistent compilation cache and returns True."""
  if f.report_only:
    out = repo.report_dir(name, f.out_dir)
    print(f'Wrote {render(load_results(out), out, rerendered=True)}')
    return False
  grid.enable_compilation_cache(repo.runs_root(name, f.workdir_root) / 'jax_cache')
  return True


def headroom_reached(h: dict | None, losses: Mapping[str, float]) -> str:
  """One sentence: where the models' final losses (label -> mean) stand against the optimum that
  ignores the regime ('' without headroom numbers). Above it, they have not yet learned what the
  regime adds, so no arm can show a slow path's gain at this budget."""
  if not h or not losses:
    return ''
  best = min(losses, key=losses.get)
  gap = losses[best] - h['regime_blind']
  most = max(h['last_block'].values()) - h['whole_past']
  if gap > 0:
    return (f'Every model ends above the optimum that ignores the regime ({h["regime_blind"]:.4f}; '
            f'the best, {best}, by {gap:.4f} nats): at this budget none has learned what the '
            f'regime adds, so the {most:.4f} nats a slow path could gain over the last block are '
            'out of reach here, and a neutral slow path says little about it.')
  return (f'The best model ({best}) ends {-gap:.4f} nats below the optimum that ignores the '
          f'regime ({h["regime_blind"]:.4f}): it uses the regime, with '
          f'{losses[best] - h["whole_past"]:.4f} nats left to the whole past\'s optimum.')


def headroom_text(h: dict | None) -> str:
  """What a slow path could gain on a synthetic source, from `grid.headroom`'s numbers ('' for
  other sources)."""
  if not h:
    return ''
  blocks = '; '.join(f'only the last block of P={P} tokens {v:.4f} (+{v - h["whole_past"]:.4f})'
                     for P, v in sorted(((int(P), v) for P, v in h['last_block'].items())))
  most = max(v for v in h['last_block'].values()) - h['whole_past']
  return (f'Headroom (the exact optima on the same validation windows): the whole past '
          f'{h["whole_past"]:.4f} nats/token; {blocks}; ignoring the regime '
          f'{h["regime_blind"]:.4f} (+{h["regime_blind"] - h["whole_past"]:.4f}). A slow path '
          f'can gain at most {most:.4f} nats over a model that sees only the last block, and '
          'the regime is worth '
          f'{h["regime_blind"] - h["whole_past"]:.4f} nats in all.\n')
