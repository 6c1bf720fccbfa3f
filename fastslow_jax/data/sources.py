"""The data sources: one table, one small class per `config.data.kind`. Imports no jax.

    source = sources.source(config.data)        # the configured kind, its fields checked
    source.vocab_size, source.tokenizer, source.fingerprint
    train = source.open('train', seq_len=T)     # a TokenDataset of T+1 tokens per window

A source says what its tokens are (vocabulary, tokenizer, the fingerprint a run records so that
it refuses other data on resume) and opens a split as random-access windows. Adding a kind is one
class here and its entry in `SOURCES`; its fields are declared in `configs/schema.py`.
"""

from __future__ import annotations

import os
from typing import ClassVar, Protocol

import numpy as np

from fastslow_jax.data import ctmc, long_range, synthetic, text, tokenizers, tokens
from fastslow_jax.data.windows import TokenDataset
from fastslow_jax.errors import UsageError

SPLITS = tokens.SPLITS  # Named by the prepared-dataset layout.


class Source(Protocol):
  """What every data source provides."""

  kind: ClassVar[str]
  vocab_size: int
  tokenizer: tokenizers.Tokenizer  # Encodes prompts, decodes samples.
  fingerprint: str | None  # The tokenization a run records (None: nothing to check).
  describe: str  # How messages name the data, e.g. "data.path='/data/x'".

  def open(self, split: str, *, seq_len: int) -> TokenDataset:
    """Random-access windows of `seq_len + 1` tokens of `split` ('train' | 'validation')."""


def absolute_path(spec: str) -> str:
  """`data.path` with each comma-separated local entry (a file, glob or directory) made absolute,
  so that a run's recorded config works from any directory; remote entries (gs://...) and ''
  stay as they are."""
  items = [s.strip() for s in str(spec or '').split(',') if s.strip()]
  return ','.join(i if '://' in i else os.path.abspath(os.path.expanduser(i)) for i in items)


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise UsageError(f'split={split!r} is unknown: choose one of {", ".join(SPLITS)}.')


def _stream_windows(stream, *, seq_len: int, split: str, source, fix: str,
                    bytes_per_token: float) -> TokenDataset:
  """Windows of a text stream (stride seq_len: consecutive windows share one token)."""
  if len(stream) < seq_len + 1:
    fix = fix if split == 'validation' else ''
    raise UsageError(f'{source.describe} gives {len(stream)} {split} tokens, fewer than one '
                     f'window of {seq_len + 1}: use more text, a smaller model.seq_len{fix}.')
  return TokenDataset(stream, seq_len=seq_len, stride=seq_len, vocab_size=source.vocab_size,
                       bits_per_token_unit='token' if source.kind == 'tokens' else 'byte',
                       name=f'{source.describe} {split}', bytes_per_token=bytes_per_token)


class Synthetic:
  """A hidden slow regime driving Markov chains (`synthetic.py`), with its exact Bayes optimum."""

  kind = 'synthetic'
  fingerprint = None

  def __init__(self, cfg):
    self.cfg = cfg
    self.process = synthetic.source_for(int(cfg.vocab_size), int(cfg.num_regimes),
                                        float(cfg.regime_period), float(cfg.concentration),
                                        int(cfg.source_seed), float(cfg.regime_contrast))
    self.vocab_size = int(cfg.vocab_size)
    self.tokenizer = tokenizers.IdsTokenizer(self.vocab_size)
    self.describe = 'data.kind=synthetic'

  def num_windows(self, split: str) -> int:
    return int(self.cfg.num_train_windows if split == 'train' else self.cfg.num_val_windows)

  def open(self, split: str, *, seq_len: int) -> TokenDataset:
    _check_split(split)
    windows = synthetic.windows(self.process, split, self.num_windows(split), seq_len + 1)
    return TokenDataset(windows.reshape(-1), seq_len=seq_len, stride=seq_len + 1,
                         vocab_size=self.vocab_size, bits_per_token_unit='token', name=f'synthetic {split}')

  def bayes_optimal_ce_per_position(self, *, seq_len: int, num_windows: int | None = None,
                                    split: str = 'validation',
                                    window: int | None = None) -> np.ndarray:
    """Optimal loss (nats) at each predicted position t = 1..seq_len, float64 [seq_len], averaged
    over windows 0..num_windows-1 of `split` (default: all of its windows), of the best predictor
    that sees the whole past (`window=None`: the Bayes optimum) or only the last `window` tokens."""
    _check_split(split)
    num = self.num_windows(split) if num_windows is None else int(num_windows)
    tokens_, _ = self.process.sample(np.arange(num), seq_len + 1, split)
    return -self.process.optimal_log_probs(tokens_, window).mean(0)

  def bayes_optimal_ce(self, *, seq_len: int, num_windows: int | None = None,
                       split: str = 'validation', window: int | None = None) -> float:
    """Mean optimal loss (nats per predicted token) over windows 0..num_windows-1 of `split`,
    scored like the model: predicting w[1:] from w[:-1]. With `shuffle=False` these are exactly
    the windows of the first num_windows / global_batch evaluation batches."""
    return float(self.bayes_optimal_ce_per_position(seq_len=seq_len, num_windows=num_windows,
                                                    split=split, window=window).mean())

  def headroom(self, *, seq_len: int, P: int, num_windows: int | None = None,
               split: str = 'validation') -> dict[str, float]:
    """What the past is worth here, in nats per token: the optimum with the whole past, with only
    the last block of P tokens, and ignoring the regime (a bigram), and the gaps between them: what
    a model that sees beyond the last block (a slow path) could gain."""
    loss = {name: self.bayes_optimal_ce(seq_len=seq_len, num_windows=num_windows, split=split,
                                        window=window)
            for name, window in (('whole_past', None), ('last_block', P), ('regime_blind', 1))}
    return {**loss, 'beyond_last_block': loss['last_block'] - loss['whole_past'],
            'regime_value': loss['regime_blind'] - loss['whole_past']}


class LongRange(Synthetic):
  """A code fixed per window and evidenced a little by every token (`long_range.py`): the Bayes
  optimum keeps falling with the context for hundreds of tokens. Its exact optima with the whole
  past and with only the last w tokens are `bayes_optimal_ce(..., window=w)` (per position:
  `bayes_optimal_ce_per_position`), so the headroom of a context of w tokens is known in nats."""

  kind = 'long_range'

  def __init__(self, cfg):
    self.cfg = cfg
    self.process = long_range.source_for(int(cfg.long_range_symbols), int(cfg.long_range_bits),
                                         float(cfg.long_range_bias), float(cfg.concentration),
                                         int(cfg.source_seed))
    self.vocab_size = self.process.vocab_size
    self.tokenizer = tokenizers.IdsTokenizer(self.vocab_size)
    self.describe = 'data.kind=long_range'

  def open(self, split: str, *, seq_len: int) -> TokenDataset:
    _check_split(split)
    windows = long_range.windows(self.process, split, self.num_windows(split), seq_len + 1)
    return TokenDataset(windows.reshape(-1), seq_len=seq_len, stride=seq_len + 1,
                        vocab_size=self.vocab_size, bits_per_token_unit='token',
                        name=f'long_range {split}')


class Ctmc:
  """A continuous-time Markov chain driven by a slow sinusoid (`ctmc.py`): the setting of the
  equilibrium-manifold theorem. Split s (1 train, 2 validation) draws its windows from
  numpy.random.default_rng([data.ctmc_window_seed, s, data.ctmc_window_salt])."""

  kind = 'ctmc'
  fingerprint = None
  _STREAMS = {'train': 1, 'validation': 2}

  def __init__(self, cfg):
    self.cfg = cfg
    self.process = ctmc.source_for(int(cfg.vocab_size), levels=int(cfg.ctmc_levels),
                                   period_range=(float(cfg.ctmc_period_min),
                                                 float(cfg.ctmc_period_max)),
                                   rate=float(cfg.ctmc_rate),
                                   concentration=float(cfg.ctmc_concentration),
                                   seed=int(cfg.source_seed))
    self.vocab_size = int(cfg.vocab_size)
    self.tokenizer = tokenizers.IdsTokenizer(self.vocab_size)
    self.describe = 'data.kind=ctmc'

  def rng(self, split: str) -> np.random.Generator:
    return np.random.default_rng([int(self.cfg.ctmc_window_seed), self._STREAMS[split],
                                  int(self.cfg.ctmc_window_salt)])

  def sample(self, split: str, *, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, y-grid levels) of every window of `split`, [num, length] each."""
    num = self.cfg.num_train_windows if split == 'train' else self.cfg.num_val_windows
    return self.process.sample(self.rng(split), int(num), length)

  def open(self, split: str, *, seq_len: int) -> TokenDataset:
    _check_split(split)
    windows, _ = self.sample(split, length=seq_len + 1)
    return TokenDataset(windows.reshape(-1), seq_len=seq_len, stride=seq_len + 1,
                         vocab_size=self.vocab_size, bits_per_token_unit='token', name=f'ctmc {split}')


class Text:
  """Local text files, UTF-8 bytes + end of document (vocabulary 257; `text.py`), read whole."""

  kind = 'text'
  tokenizer = tokenizers.BYTE
  vocab_size = tokenizers.BYTE.vocab_size
  fingerprint = tokenizers.BYTE.fingerprint

  def __init__(self, cfg):
    self.cfg = cfg
    self.describe = f'data.path={cfg.path!r}'

  def open(self, split: str, *, seq_len: int) -> TokenDataset:
    _check_split(split)
    stream = text.split_stream(text.read_text_files(self.cfg.path), self.cfg.val_fraction, split)
    return _stream_windows(stream, seq_len=seq_len, split=split, source=self,
                           fix=' or a larger data.val_fraction', bytes_per_token=1.0)


class Tfds(Text):
  """A TFDS dataset prepared as array_record, read without TensorFlow, byte-level like `text`."""

  kind = 'tfds'

  def __init__(self, cfg):
    self.cfg = cfg
    self.describe = f'data.tfds_name={cfg.tfds_name!r}'

  def open(self, split: str, *, seq_len: int) -> TokenDataset:
    _check_split(split)
    return _stream_windows(text.read_tfds(self.cfg, split), seq_len=seq_len, split=split,
                           source=self, fix=' or a larger data.val_fraction',
                           bytes_per_token=1.0)


class Tokens:
  """A directory written by `python -m fastslow_jax.data.prepare` with any tokenizer; windows
  read from its shards on demand (`tokens.py`), so memory does not grow with the corpus."""

  kind = 'tokens'

  def __init__(self, cfg):
    self.cfg = cfg
    self.manifest = tokens.read_manifest(cfg.path)
    self.vocab_size = int(self.manifest['tokenizer']['vocab_size'])
    self.fingerprint = self.manifest['tokenizer']['fingerprint']
    self.describe = f'data.path={cfg.path!r}'

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    return tokens.tokenizer(self.cfg.path)

  def open(self, split: str, *, seq_len: int) -> TokenDataset:
    _check_split(split)
    stream, info = tokens.open_split(self.cfg.path, split)
    return _stream_windows(stream, seq_len=seq_len, split=split, source=self,
                           fix=' or prepare with a larger --val_fraction',
                           bytes_per_token=info['bytes'] / info['tokens'])


SOURCES: dict[str, type[Source]] = {
    'synthetic': Synthetic, 'text': Text, 'tfds': Tfds, 'tokens': Tokens, 'ctmc': Ctmc,
    'long_range': LongRange}


def source(cfg) -> Source:
  """The source `cfg` (`config.data`) configures; an unknown kind is a one-line UsageError."""
  if cfg.kind not in SOURCES:
    raise UsageError(f'data.kind={cfg.kind!r} is unknown: choose one of {", ".join(SOURCES)}.')
  return SOURCES[cfg.kind](cfg)


def check_tokenizer(source: Source, trained_with: str | None, where: str = 'the workdir',
                    fix: str = 'or a new --workdir') -> None:
  """Refuses data tokenized otherwise than the run `trained_with` (its recorded fingerprint;
  None: nothing recorded, anything goes). One-line UsageError naming the data and the fix
  (`fix` completes 'use data prepared with the same tokenizer')."""
  if trained_with is None or source.fingerprint == trained_with:
    return
  raise UsageError(f'{where} was trained on tokenizer {trained_with}, but {source.describe} has '
                   f'{source.fingerprint}: use data prepared with the same tokenizer'
                   f'{", " + fix if fix else ""}.')
