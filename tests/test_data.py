"""Data sources and the Grain iterator: determinism, splits, sharding, checkpointed state."""

import itertools

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fastslow_jax import data
from fastslow_jax.data import synthetic, text


def synthetic_config(**overrides):
  cfg = data.default_data_config()
  cfg.update(dict(num_train_windows=256, num_val_windows=64, **overrides))
  return cfg


def text_config(path, **overrides):
  cfg = data.default_data_config()
  cfg.update(dict(kind='text', path=str(path), **overrides))
  return cfg


# ------------------------------------------------------------------------------------ synthetic


def test_synthetic_is_deterministic_and_in_range():
  cfg = synthetic_config()
  a = data.make_dataset(cfg, seq_len=32, split='train')
  b = data.make_dataset(synthetic_config(), seq_len=32, split='train')
  val = data.make_dataset(cfg, seq_len=32, split='validation')
  assert len(a) == 256 and len(val) == 64 and a[0].shape == (33,) and a[0].dtype == np.int32
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert a.tokens.min() >= 0 and a.tokens.max() < cfg.vocab_size == data.vocab_size(cfg)
  assert not np.array_equal(a.tokens[:64], val.tokens)  # Splits are different draws.


def test_synthetic_regime_switches_at_the_configured_rate():
  source = synthetic.FastSlowSource(vocab_size=16, num_regimes=4, regime_period=8,
                                    concentration=0.3, seed=0)
  _, regimes = source.sample(2000, 64, 'train')
  switch_rate = np.mean(regimes[:, 1:] != regimes[:, :-1])
  assert abs(switch_rate - 1 / 8) < 0.01


def _brute_force_ce(source, tokens):
  """Exact predictive loss by enumerating every regime path (tiny cases only)."""
  K, T = source.K, tokens.shape[1]
  losses = []
  for x in tokens:
    def joint(prefix_len):  # p(x_1..x_prefix_len | x_0), summed over regime paths.
      total = 0.0
      for path in itertools.product(range(K), repeat=prefix_len + 1):
        p = 1.0 / K
        for t in range(1, prefix_len + 1):
          p *= source.S[path[t - 1], path[t]] * source.A[path[t], x[t - 1], x[t]]
        total += p
      return total
    losses.append([-np.log(joint(t) / joint(t - 1)) for t in range(1, T)])
  return np.mean(losses)


def test_bayes_optimal_loss_matches_enumeration_over_regime_paths():
  source = synthetic.FastSlowSource(vocab_size=5, num_regimes=2, regime_period=3,
                                    concentration=0.5, seed=3)
  tokens, _ = source.sample(6, 5, 'validation')
  filtered = -source.predictive_log_probs(tokens).mean()
  np.testing.assert_allclose(filtered, _brute_force_ce(source, tokens), rtol=1e-10)


def test_bayes_optimal_loss_is_below_what_ignoring_the_regime_costs():
  cfg = synthetic_config()
  optimum = data.bayes_optimal_ce(cfg, seq_len=64, num_windows=64)
  tokens = data.make_dataset(cfg, seq_len=64, split='validation').tokens
  source = synthetic.source_for(64, 4, 16.0, 0.3, 1234)
  # A predictor that knows the chains but not the regime: the uniform mixture of the K chains.
  mixture = source.A.mean(0)[tokens[:, :-1], tokens[:, 1:]]
  assert 0 < optimum < -np.log(mixture).mean() < np.log(cfg.vocab_size)


# ----------------------------------------------------------------------------------------- text


def test_text_windows_split_and_vocabulary(tmp_path):
  (tmp_path / 'a.txt').write_text('hello world ' * 200)
  (tmp_path / 'b.txt').write_text('fast and slow ' * 200)
  cfg = text_config(f'{tmp_path}/*.txt', val_fraction=0.1)
  train = data.make_dataset(cfg, seq_len=16, split='train')
  val = data.make_dataset(cfg, seq_len=16, split='validation')
  assert train.vocab_size == data.vocab_size(cfg) == 257 and train.bits_per_token_unit == 'byte'
  stream = text.read_text_files(cfg.path)
  assert (stream == text.END_OF_DOCUMENT).sum() == 2
  assert len(train.stream) + len(val.stream) == len(stream)
  np.testing.assert_array_equal(np.concatenate([train.stream, val.stream]), stream)
  w0, w1 = train[0], train[1]
  assert w0.shape == (17,) and w0[-1] == w1[0]  # Stride T: every token is a target once.
  assert bytes(w0.astype(np.uint8)).decode() == ('hello world ' * 2)[:17]


def test_real_text(shakespeare_path):
  ds = data.make_dataset(text_config(shakespeare_path), seq_len=256, split='train')
  assert len(ds) > 3000 and bytes(ds[0][:9].astype(np.uint8)) == b'First Cit'


@pytest.mark.parametrize('content,match', [
    (None, 'matches no file'), ('', 'only empty files'), ('short', 'fewer than one window'),
])
def test_text_errors_name_the_field(tmp_path, content, match):
  path = tmp_path / 'in.txt'
  if content is not None:
    path.write_text(content)
  with pytest.raises(ValueError, match=match) as e:
    data.make_dataset(text_config(path), seq_len=64, split='train')
  assert 'data.path' in str(e.value) and '\n' not in str(e.value)


def test_unknown_kind_is_an_error():
  with pytest.raises(ValueError, match="data.kind='wiki' is unknown"):
    data.vocab_size(synthetic_config(kind='wiki'))


# ----------------------------------------------------------------------------------------- tfds


def _build_tiny_tfds(data_dir):
  """A real TFDS dataset (array_record) built by a TFDS builder, no TensorFlow needed."""
  tfds = pytest.importorskip('tensorflow_datasets')

  class TinyStories(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {'text': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples(0, 40),
              'validation': self._generate_examples(40, 50)}

    def _generate_examples(self, start, stop):
      for i in range(start, stop):
        yield i, {'text': f'story {i}: the slow path waits for the block to end. ' * 3}

  builder = TinyStories(data_dir=str(data_dir), file_format='array_record')
  builder.download_and_prepare()
  return builder.name


def test_tfds_source_reads_a_self_built_dataset(tmp_path):
  name = _build_tiny_tfds(tmp_path)
  cfg = data.default_data_config()
  cfg.update(dict(kind='tfds', tfds_name=name, tfds_data_dir=str(tmp_path)))
  train = data.make_dataset(cfg, seq_len=32, split='train')
  val = data.make_dataset(cfg, seq_len=32, split='validation')
  assert len(train) > len(val) > 0
  documents = bytes(train.stream[train.stream < 256].astype(np.uint8)).decode()
  assert all(f'story {i}:' in documents for i in range(40))  # TFDS shuffles; all are there.
  assert (train.stream == text.END_OF_DOCUMENT).sum() == 40


def test_tfds_missing_dataset_is_an_error(tmp_path):
  cfg = data.default_data_config()
  cfg.update(dict(kind='tfds', tfds_name='no_such_dataset', tfds_data_dir=str(tmp_path)))
  with pytest.raises(ValueError, match='data.tfds_name'):
    data.make_dataset(cfg, seq_len=32, split='train')
  cfg.tfds_data_dir = str(tmp_path / 'absent')
  with pytest.raises(ValueError, match='data.tfds_data_dir'):
    data.make_dataset(cfg, seq_len=32, split='train')


# ------------------------------------------------------------------------------------- iterator


def _first_column(batches):
  return {int(w) for b in batches for w in b[:, 0]}


def test_process_shards_are_disjoint_and_cover_an_epoch():
  ds = data.make_dataset(synthetic_config(), seq_len=8, split='train')
  index_of = {tuple(ds[i]): i for i in range(len(ds))}
  seen = []
  for shard in range(2):
    it = data.make_iterator(ds, batch_size=16, seed=7, shard_index=shard, shard_count=2,
                            num_epochs=1)
    seen.append({index_of[tuple(w)] for b in it for w in b})
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(len(ds)))


def test_epochs_are_reshuffled():
  ds = data.make_dataset(synthetic_config(), seq_len=8, split='train')
  it = data.make_iterator(ds, batch_size=256, seed=0)
  first, second = next(it), next(it)
  assert not np.array_equal(first, second)
  assert sorted(map(tuple, first)) == sorted(map(tuple, second))


def test_iterator_state_resumes_exactly():
  ds = data.make_dataset(synthetic_config(), seq_len=8, split='train')
  it = data.make_iterator(ds, batch_size=8, seed=1)
  for _ in range(5):
    next(it)
  state = it.get_state()
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
  expected = next(it)
  restored = data.make_iterator(ds, batch_size=8, seed=2)
  with ocp.CheckpointManager(tmp_path) as mngr:
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  np.testing.assert_array_equal(next(restored), expected)
