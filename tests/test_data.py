"""Data sources and the Grain iterator: determinism, splits, sharding, checkpointed state."""

import itertools
import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fastslow_jax import configlib, data, runtime
from fastslow_jax.configs import schema
from fastslow_jax.data import synthetic, text


def synthetic_config(**overrides):
  cfg = schema.defaults().data
  cfg.update({'num_train_windows': 256, 'num_val_windows': 64, **overrides})
  return cfg


def text_config(files, **overrides):
  cfg = schema.defaults().data
  cfg.update({'kind': 'text', 'path': str(files), **overrides})
  return cfg


def windows_of(ds):
  return np.stack([ds[i] for i in range(len(ds))])


# ------------------------------------------------------------------------------------ synthetic


def test_synthetic_is_deterministic_random_access_and_in_range():
  cfg = synthetic_config()
  a = data.make_dataset(cfg, seq_len=32, split='train')
  b = data.make_dataset(synthetic_config(num_train_windows=100), seq_len=32, split='train')
  val = data.make_dataset(cfg, seq_len=32, split='validation')
  assert isinstance(a, data.TokenDataset) and a.bits_per_token_unit == 'token'
  assert len(a) == 256 and len(val) == 64 and a[0].shape == (33,) and a[0].dtype == np.int32
  wa = windows_of(a)
  np.testing.assert_array_equal(wa[:100], windows_of(b))  # Window i depends on i alone.
  source = synthetic.source_for(64, 16, 1024.0, 0.3, 1234, 0.25)  # The default source.
  np.testing.assert_array_equal(source.sample([7, 3], 33, 'train')[0], wa[[7, 3]])
  assert wa.min() >= 0 and wa.max() < cfg.vocab_size == data.source(cfg).vocab_size == a.vocab_size
  assert len(np.unique(wa)) == cfg.vocab_size
  assert not np.array_equal(wa[:64], windows_of(val))  # Splits are different draws.
  with pytest.raises(IndexError):
    a[256]


def test_synthetic_regimes_and_chains_are_the_configured_ones():
  source = synthetic.FastSlowSource(vocab_size=16, num_regimes=4, regime_period=8,
                                    concentration=0.3, seed=0)
  tokens, regimes = source.sample(np.arange(2000), 64, 'train')
  before, after = regimes[:, :-1], regimes[:, 1:]
  assert abs(np.mean(after != before) - 1 / 8) < 0.01  # Dwell time regime_period.
  np.testing.assert_allclose(np.bincount(regimes.ravel()) / regimes.size, 0.25, atol=0.02)
  jumps = np.bincount(((after - before) % 4)[after != before], minlength=4)[1:]
  np.testing.assert_allclose(jumps / jumps.sum(), 1 / 3, atol=0.03)  # Uniform over the others.
  # Tokens follow the chain of the current regime, not the average chain.
  counts = np.zeros((4, 16, 16))
  np.add.at(counts, (regimes[:, 1:], tokens[:, :-1], tokens[:, 1:]), 1)
  rows = counts.sum(-1, keepdims=True)
  weight = rows[..., 0] / rows.sum()
  def mean_tv(chains):
    return (0.5 * np.abs(counts / np.maximum(rows, 1) - chains).sum(-1) * weight).sum()
  assert mean_tv(source.A) < 0.05 < 0.2 < mean_tv(source.A.mean(0, keepdims=True))


def _brute_force_ce(source, tokens):
  """Loss per position by enumerating every regime path (tiny cases only): [T]."""
  K, L = source.K, tokens.shape[1]
  losses = []
  for x in tokens:
    def joint(n):  # p(x_1..x_n | x_0), summed over the regime paths z_0..z_n.
      total = 0.0
      for path in itertools.product(range(K), repeat=n + 1):
        p = 1.0 / K
        for t in range(1, n + 1):
          p *= source.S[path[t - 1], path[t]] * source.A[path[t], x[t - 1], x[t]]
        total += p
      return total
    losses.append([-np.log(joint(t) / joint(t - 1)) for t in range(1, L)])
  return np.mean(losses, 0)


def test_bayes_optimal_loss_matches_enumeration_over_regime_paths():
  cfg = synthetic_config(vocab_size=5, num_regimes=2, regime_period=3, concentration=0.5,
                         source_seed=3, num_val_windows=6, regime_contrast=0.5)
  per_position = data.source(cfg).bayes_optimal_ce_per_position(seq_len=4)
  source = synthetic.source_for(5, 2, 3.0, 0.5, 3, 0.5)
  tokens = windows_of(data.make_dataset(cfg, seq_len=4, split='validation'))
  assert per_position.shape == (4,)
  np.testing.assert_allclose(per_position, _brute_force_ce(source, tokens), rtol=1e-10)
  assert data.source(cfg).bayes_optimal_ce(seq_len=4) == pytest.approx(per_position.mean(), rel=1e-12)


def _windowed_brute_force_ce(source, tokens, window):
  """Loss per position of the best predictor that sees only the last `window` tokens, by
  enumerating every earlier token and every regime path (tiny cases only): [T]."""
  K, V, L = source.K, source.V, tokens.shape[1]

  def prob(suffix, start):  # p(x_start..x_{start+len-1} = suffix), over everything before.
    total = 0.0
    for prefix in itertools.product(range(V), repeat=start):
      x = list(prefix) + list(suffix)
      for path in itertools.product(range(K), repeat=len(x)):
        p = 1.0 / (K * V)
        for t in range(1, len(x)):
          p *= source.S[path[t - 1], path[t]] * source.A[path[t], x[t - 1], x[t]]
        total += p
    return total

  losses = []
  for x in tokens:
    row = []
    for t in range(1, L):
      s = max(0, t - window)
      row.append(-np.log(prob(x[s:t + 1], s) / prob(x[s:t], s)))
    losses.append(row)
  return np.mean(losses, 0)


def test_optimal_loss_of_a_window_matches_enumeration_and_orders_the_headroom():
  """The best predictor that sees only the last w tokens: exact (enumeration), as good as the
  whole past when w covers it, and the default source's past is worth more than its last block."""
  cfg = synthetic_config(vocab_size=3, num_regimes=2, regime_period=3, concentration=0.5,
                         source_seed=5, num_val_windows=4, regime_contrast=0.5)
  source, tokens = data.source(cfg), windows_of(data.make_dataset(cfg, seq_len=4,
                                                                  split='validation'))
  for window in (1, 2):
    np.testing.assert_allclose(source.bayes_optimal_ce_per_position(seq_len=4, window=window),
                               _windowed_brute_force_ce(source.process, tokens, window),
                               rtol=1e-10)
  np.testing.assert_allclose(source.bayes_optimal_ce_per_position(seq_len=4, window=4),
                             source.bayes_optimal_ce_per_position(seq_len=4), rtol=1e-12)
  room = data.source(synthetic_config()).headroom(seq_len=64, P=16, num_windows=64)
  assert room['whole_past'] < room['last_block'] < room['regime_blind']
  assert room['beyond_last_block'] > 0.02  # Fast-slow by construction: evidence over blocks.


def test_bayes_optimal_loss_lies_between_knowing_and_ignoring_the_regime():
  cfg = synthetic_config(num_regimes=4, regime_period=16.0, regime_contrast=1.0)
  optimum = data.source(cfg).bayes_optimal_ce(seq_len=64)
  source = synthetic.source_for(64, 4, 16.0, 0.3, 1234)
  tokens, regimes = source.sample(np.arange(64), 65, 'validation')
  np.testing.assert_array_equal(tokens, windows_of(data.make_dataset(cfg, seq_len=64,
                                                                     split='validation')))
  prev, nxt = tokens[:, :-1], tokens[:, 1:]
  oracle = -np.log(source.A[regimes[:, 1:], prev, nxt]).mean()  # Knows z_t: a lower bound.
  mixture = -np.log(source.A.mean(0)[prev, nxt]).mean()  # Knows the chains, not the regime.
  unigram = np.bincount(nxt.ravel(), minlength=64) / nxt.size
  entropy = -(unigram[unigram > 0] * np.log(unigram[unigram > 0])).sum()
  assert 0 < oracle < optimum < mixture < entropy <= np.log(64)
  per_position = data.source(cfg).bayes_optimal_ce_per_position(seq_len=64)
  assert per_position[0] > per_position[32:].mean() + 0.2  # The filter learns the regime.
  assert not hasattr(data.source(text_config('x')), 'bayes_optimal_ce')  # Only where it is known.


def test_unknown_kind_and_split_are_errors():
  with pytest.raises(ValueError, match="data.kind='wiki' is unknown: choose one of synthetic"):
    data.source(synthetic_config(kind='wiki')).vocab_size
  with pytest.raises(ValueError, match='data.kind'):
    data.make_dataset(synthetic_config(kind='wiki'), seq_len=8, split='train')
  with pytest.raises(ValueError, match="split='test'"):
    data.make_dataset(synthetic_config(), seq_len=8, split='test')


# ----------------------------------------------------------------------------------------- text


def test_text_windows_split_and_vocabulary(tmp_path):
  (tmp_path / 'a.txt').write_text('hello world ' * 200)
  (tmp_path / 'b.txt').write_text('fast and slow é ' * 200)
  cfg = text_config(f'{tmp_path}/*.txt', val_fraction=0.1)
  train = data.make_dataset(cfg, seq_len=16, split='train')
  val = data.make_dataset(cfg, seq_len=16, split='validation')
  assert train.vocab_size == val.vocab_size == data.source(cfg).vocab_size == 257
  assert train.bits_per_token_unit == 'byte'
  stream = text.read_text_files(cfg.path)
  assert len(stream) == 2400 + 3400 + 2 and stream.max() == text.END_OF_DOCUMENT
  np.testing.assert_array_equal(np.nonzero(stream == text.END_OF_DOCUMENT)[0], [2400, 5801])
  # Validation is the last 10% of the stream, train the rest: disjoint, together everything.
  assert len(val.stream) == len(stream) - int(0.9 * len(stream))
  np.testing.assert_array_equal(np.concatenate([train.stream, val.stream]), stream)
  # Windows of T+1 with stride T: every token of the split is a target exactly once.
  w = windows_of(train)
  assert w.shape == (len(train), 17) and w.dtype == np.int32
  assert len(train) == (len(train.stream) - 1) // 16 and len(train.stream) > 5000
  np.testing.assert_array_equal(w[:-1, -1], w[1:, 0])
  np.testing.assert_array_equal(w[:, 1:].ravel(), train.stream[1:1 + 16 * len(train)])
  assert bytes(w[0].astype(np.uint8)).decode() == ('hello world ' * 2)[:17]
  assert bytes(val.stream[-10:-1].astype(np.uint8)).decode().endswith('slow é ')
  # Deterministic, and the same files named as a comma-separated list give the same stream.
  again = text_config(f'{tmp_path}/a.txt, {tmp_path}/b.txt', val_fraction=0.1)
  np.testing.assert_array_equal(windows_of(data.make_dataset(again, seq_len=16, split='train')), w)


def test_real_text(shakespeare_path):
  cfg = text_config(shakespeare_path)
  train = data.make_dataset(cfg, seq_len=256, split='train')
  val = data.make_dataset(cfg, seq_len=256, split='validation')
  assert len(train) > 3000 and len(val) > 150
  assert bytes(train[0][:9].astype(np.uint8)) == b'First Cit'
  assert len(train.stream) + len(val.stream) == shakespeare_path.stat().st_size + 1
  assert val.stream[-1] == text.END_OF_DOCUMENT and train.stream.max() < 128  # ASCII text.


@pytest.mark.parametrize('content,overrides,match', [
    (None, {}, 'matches no file'),
    ('', {}, 'only empty files'),
    ('short', {}, 'fewer than one window'),
    ('x' * 100, {'path': ' , '}, 'names no text file'),
    ('x' * 100, {'val_fraction': 1.5}, 'data.val_fraction=1.5 is invalid'),
])
def test_text_errors_name_the_field(tmp_path, content, overrides, match):
  path = tmp_path / 'in.txt'
  if content is not None:
    path.write_text(content)
  with pytest.raises(ValueError, match=match) as e:
    data.make_dataset(text_config(path, **overrides), seq_len=64, split='train')
  assert 'data.' in str(e.value) and '\n' not in str(e.value)


def test_too_short_validation_says_to_raise_val_fraction(tmp_path):
  (tmp_path / 'in.txt').write_text('x' * 1000)
  cfg = text_config(tmp_path / 'in.txt', val_fraction=0.01)
  assert len(data.make_dataset(cfg, seq_len=64, split='train')) == 15
  with pytest.raises(ValueError, match=r'data.path=.*fewer than one window.*data.val_fraction'):
    data.make_dataset(cfg, seq_len=64, split='validation')


# ----------------------------------------------------------------------------------------- tfds


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  """Two real TFDS datasets (array_record) written by TFDS builders, without TensorFlow.

  `skip_registration` keeps the builder classes out of TFDS's registry, so reading goes through
  the files alone, as in a training process that never imported the builder code.
  """
  tfds = pytest.importorskip('tensorflow_datasets')
  data_dir = tmp_path_factory.mktemp('tfds')

  class TinyText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')
    SPLITS = {}  # name -> (first id, last id + 1)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {'text': tfds.features.Text(), 'id': tfds.features.Scalar(np.int32)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {name: self._generate_examples(*span) for name, span in self.SPLITS.items()}

    def _generate_examples(self, start, stop):
      for i in range(start, stop):
        yield i, {'text': f'story {i}: the slow path waits for the block to end. ' * 3, 'id': i}

  class TinyStories(TinyText, skip_registration=True):
    SPLITS = {'train': (0, 40), 'validation': (40, 50)}

  class TinyNotes(TinyText, skip_registration=True):
    SPLITS = {'train': (0, 30)}

  for cls in (TinyStories, TinyNotes):
    cls(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  return data_dir


def tfds_config(data_dir, name, **overrides):
  cfg = schema.defaults().data
  cfg.update(dict(kind='tfds', tfds_name=name, tfds_data_dir=str(data_dir), **overrides))
  return cfg


def _documents(stream):
  docs = bytes(stream.astype(np.uint8)).split(bytes([text.END_OF_DOCUMENT % 256]))
  return [d.decode() for d in docs if d]


def test_tfds_reads_a_prepared_dataset(tfds_dir):
  cfg = tfds_config(tfds_dir, 'tiny_stories')
  train = data.make_dataset(cfg, seq_len=32, split='train')
  val = data.make_dataset(cfg, seq_len=32, split='validation')
  assert train.vocab_size == data.source(cfg).vocab_size == 257 and train.bits_per_token_unit == 'byte'
  assert len(train) == (len(train.stream) - 1) // 32 and len(train) > len(val) > 0
  assert (train.stream == text.END_OF_DOCUMENT).sum() == 40 == train.stream[-1:].size * 40
  ids = sorted(int(d.split(':')[0].split()[1]) for d in _documents(train.stream))
  assert ids == list(range(40))  # TFDS shuffles the records at write time; all are there.
  assert sorted(int(d.split(':')[0].split()[1]) for d in _documents(val.stream)) == list(
      range(40, 50))
  again = data.make_dataset(cfg, seq_len=32, split='train')
  np.testing.assert_array_equal(windows_of(again), windows_of(train))


def test_tfds_without_validation_split_holds_out_the_tail_of_train(tfds_dir):
  cfg = tfds_config(tfds_dir, 'tiny_notes:1.0.0', val_fraction=0.2)
  train = data.make_dataset(cfg, seq_len=32, split='train')
  val = data.make_dataset(cfg, seq_len=32, split='validation')
  whole = np.concatenate([train.stream, val.stream])
  assert (whole == text.END_OF_DOCUMENT).sum() == 30
  assert len(val.stream) == len(whole) - int(0.8 * len(whole))


def test_prepare_tokenizes_tfds_splits(tfds_dir, tmp_path):
  from fastslow_jax.data import prepare, tokens

  def story_ids(out, split):
    stream, _ = tokens.open_split(str(out), split)
    return sorted(int(d.split(':')[0].split()[1]) for d in _documents(stream[:]))

  own = prepare.prepare(str(tmp_path / 'own'), 'byte', tfds_name='tiny_stories',
                        tfds_data_dir=str(tfds_dir), num_workers=0)
  assert story_ids(tmp_path / 'own', 'train') == list(range(40))  # The dataset's own splits.
  assert story_ids(tmp_path / 'own', 'validation') == list(range(40, 50))
  assert own['splits']['train']['bytes'] == sum(
      len(f'story {i}: the slow path waits for the block to end. ' * 3) for i in range(40))
  held = prepare.prepare(str(tmp_path / 'held'), 'byte', tfds_name='tiny_notes:1.0.0',
                         tfds_data_dir=str(tfds_dir), val_fraction=0.2, num_workers=0)
  assert [held['splits'][s]['documents'] for s in ('train', 'validation')] == [24, 6]
  assert sorted(story_ids(tmp_path / 'held', 'train') + story_ids(tmp_path / 'held',
                                                                  'validation')) == list(range(30))


@pytest.mark.parametrize('overrides,match', [
    ({'tfds_name': 'no_such_dataset'}, "data.tfds_name='no_such_dataset' is not found"),
    ({'tfds_name': ''}, 'data.tfds_name is empty'),
    ({'tfds_data_dir': '/nonexistent/tfds'}, "data.tfds_data_dir='/nonexistent/tfds' does not"),
    ({'tfds_name': 'mnist'}, "data.tfds_name='mnist' is not prepared"),  # Registered, not built.
    ({'tfds_name': 'tiny_stories:2.0.0'}, 'data.tfds_name'),
    ({'tfds_text_feature': 'body'}, r"data.tfds_text_feature='body' .*\['id', 'text'\]"),
    ({'tfds_train_split': 'dev'}, r"data.tfds_train_split='dev' .*\['train', 'validation'\]"),
])
def test_tfds_errors_name_the_field(tfds_dir, overrides, match):
  cfg = tfds_config(tfds_dir, 'tiny_stories')
  cfg.update(overrides)
  with pytest.raises(ValueError, match=match) as e:
    data.make_dataset(cfg, seq_len=32, split='train')
  assert '\n' not in str(e.value)


# ------------------------------------------------------------------------------------- iterator


def _index_of(ds):
  index = {ds[i].tobytes(): i for i in range(len(ds))}
  assert len(index) == len(ds)  # Windows are distinct, so a window identifies its index.
  return index


def test_process_shards_are_disjoint_and_cover_an_epoch():
  ds = data.make_dataset(synthetic_config(num_train_windows=250), seq_len=8, split='train')
  index_of = _index_of(ds)
  seen = []
  for shard in range(2):
    it = data.make_iterator(ds, batch_size=16, seed=7, shard_index=shard, shard_count=2,
                            num_epochs=1)
    batches = list(it)
    assert len(batches) == 7 and all(b.shape == (16, 9) and b.dtype == np.int32 for b in batches)
    seen.append([index_of[w.tobytes()] for b in batches for w in b])
  assert len(set(seen[0])) == len(seen[0]) == len(seen[1]) == 112
  assert not set(seen[0]) & set(seen[1])
  assert len(set(seen[0]) | set(seen[1])) == 224  # 250 cut to whole global batches of 32.


def test_global_batches_do_not_depend_on_the_process_count():
  ds = data.make_dataset(synthetic_config(num_train_windows=250), seq_len=8, split='train')
  whole = data.make_iterator(ds, batch_size=16, seed=3)
  halves = [data.make_iterator(ds, batch_size=8, seed=3, shard_index=i, shard_count=2)
            for i in range(2)]
  quarters = [data.make_iterator(ds, batch_size=4, seed=3, shard_index=i, shard_count=4)
              for i in range(4)]
  for _ in range(40):  # 15 global batches per epoch: crosses two epoch boundaries.
    rows = {w.tobytes() for w in next(whole)}
    assert rows == {w.tobytes() for it in halves for w in next(it)}
    assert rows == {w.tobytes() for it in quarters for w in next(it)}


def test_epochs_are_reshuffled_and_unshuffled_order_is_the_index_order():
  ds = data.make_dataset(synthetic_config(), seq_len=8, split='train')
  it = data.make_iterator(ds, batch_size=256, seed=0)
  first, second = next(it), next(it)
  assert not np.array_equal(first, second)
  everything = sorted(map(bytes, windows_of(ds)))
  assert sorted(map(bytes, first)) == sorted(map(bytes, second)) == everything
  assert not np.array_equal(first, next(data.make_iterator(ds, batch_size=256, seed=1)))
  # Evaluation reads in index order, so the first n windows are those bayes_optimal_ce scores.
  ordered = data.make_iterator(ds, batch_size=32, seed=0, shuffle=False, num_epochs=1)
  np.testing.assert_array_equal(np.concatenate(list(ordered)), windows_of(ds))


def test_iterator_state_resumes_exactly():
  ds = data.make_dataset(synthetic_config(), seq_len=8, split='train')
  it = data.make_iterator(ds, batch_size=8, seed=1)
  for _ in range(5):
    next(it)
  state = it.get_state()
  assert state == {'next_index': 5}  # Batches; checkpointing.py re-shards it across processes.
  expected = [next(it) for _ in range(40)]  # Crosses an epoch boundary (32 batches/epoch).
  fresh = data.make_iterator(ds, batch_size=8, seed=1)
  fresh.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(fresh), want)


def test_iterator_state_round_trips_through_orbax(tmp_path):
  ds = data.make_dataset(synthetic_config(), seq_len=8, split='train')
  it = data.make_iterator(ds, batch_size=8, seed=2)
  for _ in range(3):
    next(it)
  with ocp.CheckpointManager(tmp_path) as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  assert json.loads((tmp_path / '3' / 'data' / 'process_0-of-1.json').read_text()) == {
      'next_index': 3}
  expected = [next(it) for _ in range(3)]
  restored = data.make_iterator(ds, batch_size=8, seed=2)
  next(restored)  # Its own position is overwritten by the restore.
  with ocp.CheckpointManager(tmp_path) as mngr:
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  for want in expected:
    np.testing.assert_array_equal(next(restored), want)


def test_iterator_over_text_and_its_errors(tmp_path):
  (tmp_path / 'in.txt').write_text('abcdefgh' * 100)
  ds = data.make_dataset(text_config(tmp_path / 'in.txt'), seq_len=16, split='train')
  batch = next(data.make_iterator(ds, batch_size=4, seed=0))
  assert batch.shape == (4, 17) and batch.dtype == np.int32 and batch.max() < 128
  with pytest.raises(ValueError, match='fewer than one global batch'):
    data.make_iterator(ds, batch_size=len(ds), seed=0, shard_count=2)
  with pytest.raises(ValueError, match='shard_index=2'):
    data.make_iterator(ds, batch_size=4, seed=0, shard_index=2, shard_count=2)


def test_data_path_is_recorded_absolute(tmp_path, monkeypatch):
  """A run's config.json names its data by absolute paths, so evaluate and generate work from
  any directory; remote entries and globs keep their form."""
  monkeypatch.chdir(tmp_path)
  assert data.absolute_path('a.txt, sub/*.txt,gs://bucket/x') == (
      f'{tmp_path}/a.txt,{tmp_path}/sub/*.txt,gs://bucket/x')
  assert data.absolute_path('') == ''
  (tmp_path / 'input.txt').write_text('to be or not to be, that is the question. ' * 200)
  config = configlib.load('fastslow:size=tiny', {'data.kind': 'text', 'data.path': 'input.txt'})
  resolved = runtime.resolve_config(config, num_devices=1)
  assert resolved.data.path == str(tmp_path / 'input.txt')
  assert config.data.path == 'input.txt'  # The caller's config is untouched.


def test_ctmc_source_draws_its_windows_from_its_seeds():
  """The continuous-time chain of the equilibrium experiment, by config: split s of window seed
  a and salt b is numpy's default_rng([a, s, b]) through the chain, exactly."""
  from fastslow_jax.data import ctmc
  cfg = synthetic_config(kind='ctmc', vocab_size=6, ctmc_levels=16, source_seed=2,
                         ctmc_window_seed=3, ctmc_window_salt=16, num_train_windows=5,
                         num_val_windows=4)
  source = data.source(cfg)
  process = ctmc.CTMCSource(6, levels=16, period_range=(384.0, 1536.0), rate=1.0,
                            concentration=0.5, seed=2)
  for split, stream, num in (('train', 1, 5), ('validation', 2, 4)):
    want, _ = process.sample(np.random.default_rng([3, stream, 16]), num, 9)
    np.testing.assert_array_equal(windows_of(data.make_dataset(cfg, seq_len=8, split=split)),
                                  want)
  assert source.vocab_size == 6 and source.fingerprint is None
