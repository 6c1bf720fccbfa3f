"""Decoding equals the parallel model: logits within 1e-5, greedy tokens token for token, for
every family and arm, several P, prompt lengths around block edges, mixed lengths in one batch;
sampling."""

import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fastslow_jax import generate as gen
from fastslow_jax import models

VOCAB = 50
NEW = 6


def model_for(*, arm='coupled', P=4, gate='channel', slow_layers='all', seed=0, num_layers=2,
              **kw):
  """A small model (seq_len 48: a multiple of every P tested) with its gates forced open."""
  cfg = models.ModelConfig(arm=arm, vocab_size=VOCAB, seq_len=48, d_model=32,
                           num_layers=num_layers, num_heads=2, slow_num_heads=2, mlp_dim=48,
                           phi_dim=48, P=P, gate=gate, slow_layers=slow_layers, compress_dim=24,
                           **kw)
  model = models.build(cfg, rngs=seed)
  params = nnx.state(model, nnx.Param)
  nnx.update(model, nnx.map_state(
      lambda path, v: jnp.full_like(v, 0.8) if 'gate' in path else v, params))
  return model


@functools.lru_cache(maxsize=None)
def _forward(graphdef):
  return jax.jit(lambda params, tokens: nnx.merge(graphdef, params)(tokens))


def parallel_logits(model, rows):
  """Logits of the parallel forward for each row (right-padded to seq_len; causal, so padding
  after a row never reaches its positions)."""
  tokens = np.zeros((len(rows), model.config.seq_len), np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
  graphdef, params = nnx.split(model)
  return np.asarray(_forward(graphdef)(params, jnp.asarray(tokens)))


def prompts_for(P, seed=0):
  lengths = sorted({max(1, P - 1), P, P + 1, 2 * P + 3})
  rng = np.random.default_rng(seed)
  return [list(rng.integers(0, VOCAB, n)) for n in lengths]


def assert_decode_equals_parallel(model, prompts):
  new, seen = gen.generate(model, prompts, max_new_tokens=NEW, return_logits=True)
  full = [list(p) + n for p, n in zip(prompts, new)]
  ref = parallel_logits(model, full)
  for i, (prompt, tokens) in enumerate(zip(prompts, new)):
    assert len(tokens) == NEW
    want = ref[i, len(prompt) - 1:len(prompt) - 1 + NEW]
    np.testing.assert_allclose(seen[i], want, atol=1e-5, rtol=1e-5,
                               err_msg=f'row {i}, prompt length {len(prompt)}')
    assert tokens == list(np.argmax(want, -1)), f'row {i}: greedy differs from the parallel argmax'


HOURGLASS_LINEAR = dict(family='hourglass', hourglass_pool='linear', hourglass_upsample='linear')


SLOW = pytest.mark.slow  # The default suite keeps one case per family.


@pytest.mark.parametrize('kw', [
    dict(P=3, slow_layers='every:2'), dict(family='compressed', P=3),
    dict(P=3, hourglass_layers='1,2,1', **HOURGLASS_LINEAR), dict(P=4, num_kv_heads=1),
    dict(P=4, fast_window=6),  # A window not a multiple of P, prompts longer than it.
    *(pytest.param(kw, marks=SLOW) for kw in (dict(family='compressed', P=4, num_kv_heads=1),
        dict(P=1), dict(P=3), dict(P=4), dict(P=16), dict(P=4, gate='scalar'),
        dict(arm='dense'), dict(arm='gate_frozen'), dict(arm='slow_frozen'),
        dict(family='compressed', P=4, slow_layers='every:2'), dict(family='hourglass', P=4),
        dict(P=16, fast_window=7), dict(P=1, fast_window=2), dict(arm='dense', fast_window=3),
        dict(family='compressed', P=4, fast_window=5, num_kv_heads=1),
        dict(P=3, fast_window=4, **HOURGLASS_LINEAR))),
], ids=str)
def test_decode_equals_parallel_forward(kw):
  assert_decode_equals_parallel(model_for(**kw), prompts_for(kw.get('P', 4)))


def _grid(family: str):
  arms = models.FAMILIES[family].arms
  variants = {'fastslow': [dict(gate=g, slow_layers=s) for g in ('scalar', 'channel')
                           for s in ('all', 'every:2')] + [dict(fast_window=5)],
              'compressed': [dict(slow_layers=s) for s in ('all', 'every:2')]
                            + [dict(fast_window=5)],
              'hourglass': [{}, dict(hourglass_pool='linear', hourglass_upsample='linear'),
                            dict(fast_window=5)]}
  return [(family, arm, P, kw) for arm in arms for P in (1, 3, 4, 16) for kw in variants[family]]


@pytest.mark.slow
@pytest.mark.parametrize('family,arm,P,kw', [c for f in models.FAMILIES for c in _grid(f)],
                         ids=str)
def test_decode_equals_parallel_forward_full_grid(family, arm, P, kw):
  model = model_for(family=family, arm=arm, P=P, seed=P, **kw)
  try:
    assert_decode_equals_parallel(model, prompts_for(P, seed=P))
  finally:  # 164 models in one worker: keep its memory to one model's programs.
    _forward.cache_clear()
    jax.clear_caches()


@pytest.mark.parametrize('family', ['fastslow', *(
    pytest.param(f, marks=SLOW) for f in models.FAMILIES if f != 'fastslow')])
def test_mixed_lengths_in_one_batch_equal_each_prompt_alone(family):
  model = model_for(P=4, family=family)
  prompts = prompts_for(4, seed=3)[::2]  # Lengths P-1 and P+1.
  together = gen.generate(model, prompts, max_new_tokens=NEW, temperature=0.0)
  alone = [gen.generate(model, [p], max_new_tokens=NEW)[0] for p in prompts]
  assert together == alone


@pytest.mark.parametrize('family', ['hourglass', *(
    pytest.param(f, marks=SLOW) for f in models.FAMILIES if f != 'hourglass')])
def test_scanned_model_decodes_like_unrolled(family):
  kw = dict(P=4, seed=2, family=family, num_layers=4)
  unrolled, scanned = model_for(**kw), model_for(scan_layers=True, **kw)
  prompts = prompts_for(4, seed=1)
  assert (gen.generate(scanned, prompts, max_new_tokens=NEW)
          == gen.generate(unrolled, prompts, max_new_tokens=NEW))


def test_windowed_caches_are_a_ring_and_the_completed_blocks():
  """The fast cache holds W entries whatever the length; the slow cache one per block."""
  graphdef, params = nnx.split(model_for(P=4, fast_window=6))
  for length in (4, 40):
    caches = jax.eval_shape(lambda p: nnx.merge(graphdef, p).prefill(
        jnp.zeros((2, 3), jnp.int32), jnp.array([3, 2]), length)[1], params)
    assert caches[0]['fast'].k.shape[1] == min(6, length)
    assert caches[0]['slow'].cache.k.shape[1] == -(-length // 4)


@pytest.mark.parametrize('family', ['fastslow', pytest.param('hourglass', marks=SLOW)])
def test_windowed_decoding_past_seq_len_equals_the_parallel_forward(family, caplog):
  """Past seq_len (trained on 48 positions, decoding to 70) the ring keeps decoding equal to
  the parallel forward over the whole sequence; the warning says the slow path is the part that
  sees more than in training, and a dense windowed model gets none."""
  model = model_for(P=4, fast_window=6, family=family)
  prompt = list(np.random.default_rng(1).integers(0, VOCAB, 40))
  with caplog.at_level('WARNING'):
    new, seen = gen.generate(model, [prompt], max_new_tokens=30, return_logits=True)
  assert 'slow path attends over up to 17 blocks, where training showed it 12' in caplog.text
  graphdef, params = nnx.split(model)
  full = jnp.asarray([prompt + new[0]])
  want = np.asarray(_forward(graphdef)(params, full))[0, len(prompt) - 1:len(prompt) + 29]
  np.testing.assert_allclose(seen[0], want, atol=1e-5, rtol=1e-5)
  assert gen.beyond_training(model_for(arm='dense', fast_window=6).config, 70) is None


def test_sampling_is_deterministic_per_seed():
  model = model_for(P=4)
  prompts = prompts_for(4)
  kw = dict(max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.95)
  first, again = (gen.generate(model, prompts, seed=7, **kw) for _ in range(2))
  other = gen.generate(model, prompts, seed=8, **kw)
  assert first == again and first != other


@pytest.mark.parametrize('top_k,top_p', [(3, 1.0), (0, 0.5), (5, 0.7)])
def test_top_k_and_top_p_never_emit_an_excluded_token(top_k, top_p):
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 30)) * 2, jnp.float32)
  probs = np.asarray(jax.nn.softmax(logits, -1), np.float64)
  allowed, likely = [], []
  for row in probs:
    order = np.argsort(-row)[:top_k or None]  # Top-k first, then the nucleus of what is left.
    kept = row[order] / row[order].sum()
    mass_before = np.cumsum(kept) - kept
    allowed.append({int(t) for t in order[mass_before < top_p]})
    share = kept[mass_before < top_p] / kept[mass_before < top_p].sum()
    likely.append({int(t) for t, q in zip(order[mass_before < top_p], share) if q > 0.03})
  sampling = gen.Sampling(temperature=1.0, top_k=top_k, top_p=top_p)
  keys = jax.random.split(jax.random.key(0), 400)
  draws = np.asarray(jax.vmap(lambda k: gen.sample_logits(k, logits, sampling))(keys))
  for i in range(4):
    assert set(draws[:, i].tolist()) <= allowed[i]
    assert likely[i] <= set(draws[:, i].tolist())  # The truncation is not stricter than asked.


def test_eos_stops_a_row_while_others_continue():
  model = model_for(P=4)
  prompts = prompts_for(4, seed=5)[:3]
  free = gen.generate(model, prompts, max_new_tokens=NEW)
  eos = free[0][2]  # Row 0 draws this token at step 3.
  stopped = gen.generate(model, prompts, max_new_tokens=NEW, eos_id=eos)
  assert stopped[0] == free[0][:free[0].index(eos) + 1]
  for before, after in zip(free[1:], stopped[1:]):
    assert after == (before[:before.index(eos) + 1] if eos in before else before)


@pytest.mark.parametrize('prompts,kw,message', [
    ([list(range(49))], {}, 'more than model.seq_len=48'),
    ([[]], {}, 'prompt 0 is empty'),
    ([[1, 99]], {}, 'outside the vocabulary'),
    ([[1]], dict(max_new_tokens=0), 'max_new_tokens=0'),
    ([[1]], dict(top_p=0.0), 'top_p=0.0'),
    ([[1]], dict(temperature=-1.0), 'temperature=-1.0'),
    ([[1]], dict(eos_id=VOCAB), 'eos_id=50'),
])
def test_bad_arguments_are_one_line_errors(prompts, kw, message):
  model = model_for(P=4)
  with pytest.raises(ValueError, match=message) as e:
    gen.generate(model, prompts, **{'max_new_tokens': 2, **kw})
  assert '\n' not in str(e.value)


# ------------------------------------------------------------------------------------------- CLI

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {'JAX_PLATFORMS': 'cpu', 'CI': 'true', 'PATH': '/usr/bin:/bin'}


def cli(*args):
  return subprocess.run([sys.executable, '-m', 'fastslow_jax.generate', *args], cwd=ROOT,
                        env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def text_run(tmp_path_factory):
  from fastslow_jax import configlib, train
  root = tmp_path_factory.mktemp('generate')
  (root / 'input.txt').write_text('To be, or not to be, that is the question.\n' * 400)
  config = configlib.load('fastslow:arm=coupled,size=tiny,P=8', {
      'model.seq_len': 32, 'model.d_model': 32, 'model.mlp_dim': 64, 'model.phi_dim': 64,
      'model.num_heads': 2, 'model.slow_num_heads': 2, 'batch_size': 8, 'total_steps': 2,
      'eval_batches': 1, 'data.kind': 'text', 'data.path': str(root / 'input.txt'),
      'mesh.data': 1})
  train.train(config, root / 'run', devices=jax.devices()[:1])
  return root / 'run'


@pytest.mark.slow
def test_cli_prints_prompt_and_samples(text_run):
  done = cli(f'--workdir={text_run}', '--prompt=To be', '--max_new_tokens=12', '--num_samples=2',
             '--temperature=1.0', '--seed=3')
  assert done.returncode == 0, done.stderr
  samples = [s for s in done.stdout.split('--- sample ') if s.strip()]
  assert len(samples) == 2 and all('\nTo be' in s for s in samples)


def test_cli_bad_input_before_any_restore_is_one_line(tmp_path):
  done = cli(f'--workdir={tmp_path}', '--prompt=x', '--prompt_file=nope.txt')
  assert done.returncode == 2 and done.stdout == '', done.stderr[-2000:]
  assert done.stderr.strip().splitlines() == [
      'error: give the prompt with exactly one of --prompt or --prompt_file.']
  assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize('args,message', [
    (['--prompt_file=nope.txt'], "--prompt_file='nope.txt' cannot be read"),
    (['--prompt=x', '--top_p=2'], 'top_p'),
    (['--prompt=x', '--max_new_tokens=0'], 'max_new_tokens'),
    (['--prompt=x', '--step=999'], 'no checkpoint at step 999'),
    (['--prompt=x', '--num_samples=0'], '--num_samples=0'),
    (['--prompt=' + 'x' * 40], 'prompt 0 has 40 tokens, more than model.seq_len=32'),
    (['--prompt=x', '--workdir=/no/such/run'], 'config.json not found'),  # The last one counts.
])
def test_cli_bad_input_is_one_line(text_run, args, message):
  before = sorted((p, p.stat().st_mtime_ns) for p in text_run.rglob('*'))
  done = cli(f'--workdir={text_run}', *args)
  assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
  assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == '', done.stderr
  assert sorted((p, p.stat().st_mtime_ns) for p in text_run.rglob('*')) == before


@pytest.mark.slow  # Compiles a decode step and a forward per model; CI runs it with the slow tests.
def test_decode_benchmark_prints_a_row_per_model():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  root = pathlib.Path(__file__).resolve().parents[1]
  out = subprocess.run([sys.executable, '-m', 'experiments.bench_decode', '--sizes=tiny',
                        '--seq_len=64', '--tokens=4', '--rounds=1'], cwd=root, env=env,
                       check=True, capture_output=True, text=True, timeout=600).stdout
  rows = [line.split() for line in out.splitlines() if line.startswith('tiny ')]
  assert [r[1] for r in rows] == ['dense', *models.FAMILIES]
  assert rows[0][-1] == '1.000' and all(float(r[-1]) > 0 and r[-2].endswith('x') for r in rows)
