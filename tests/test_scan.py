"""Scanned layers: the same model as the unrolled stack, stacked parameters, layout conversion,
remat policies."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fastslow_jax import configlib, models, restoring, runtime, sharding, train
from fastslow_jax.models import scan

VOCAB = 48


def config(**overrides) -> models.ModelConfig:
  base = dict(arm='coupled', vocab_size=VOCAB, seq_len=16, d_model=32, num_layers=5, num_heads=2,
              mlp_dim=48, P=4, slow_num_heads=2, phi_dim=48, gate='channel', compress_dim=16)
  return models.ModelConfig(**{**base, **overrides})


def open_gates(model) -> None:
  """Gates at 0.7 (else slow paths would not reach the output and parity would be vacuous)."""
  params = nnx.state(model, nnx.Param)
  nnx.update(model, nnx.map_state(
      lambda path, v: jnp.full_like(v, 0.7) if 'gate' in path else v, params))


@nnx.jit
def loss_and_grads(model, tokens):
  """((loss, logits), grads) of the next-token loss on tokens [B, T+1], compiled."""
  def loss(model):
    logits = model(tokens[:, :-1])
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
        logits, tokens[:, 1:, None], -1)[..., 0]), logits
  return nnx.value_and_grad(loss, has_aux=True)(model)


def flat(state) -> dict:
  return {path: np.asarray(v[...] if isinstance(v, nnx.Variable) else v)
          for path, v in nnx.to_flat_state(state)}


SLOW = pytest.mark.slow  # The default suite keeps one case of each kind.


@pytest.mark.parametrize('overrides,groups', [
    (dict(slow_layers='every:2'), (2, 2)),  # 2 x (fast, slow) + 1 fast layer unscanned.
    (dict(fast_window=5), (1, 5)),  # A local fast path.
    pytest.param(dict(arm='dense'), (1, 5), marks=SLOW),
    pytest.param(dict(arm='coupled'), (1, 5), marks=SLOW),
    pytest.param(dict(arm='gate_frozen'), (1, 5), marks=SLOW),
    pytest.param(dict(arm='slow_frozen', gate='scalar'), (1, 5), marks=SLOW),
    pytest.param(dict(slow_layers='0,3', num_layers=6), (3, 2), marks=SLOW),
])
def test_scanned_equals_unrolled_logits_and_gradients(overrides, groups):
  unrolled = models.build(config(**overrides), rngs=3)
  scanned = models.build(config(scan_layers=True, **overrides), rngs=3)
  assert scanned.config.scan_groups == groups
  k, r = groups
  assert len(scanned.stack) == k and len(scanned.blocks) == scanned.config.num_layers - r * k
  assert_same_model(unrolled, scanned)


@pytest.mark.slow  # The default suite's scanned == unrolled: the mixed stack above.
@pytest.mark.parametrize('overrides,groups', [
    (dict(family='hourglass', hourglass_layers='2,3,1'),
     {('pre',): (1, 2), ('slow', 'inner'): (1, 3), ('post',): (1, 0)}),
    pytest.param(dict(family='compressed'), {(): (1, 5)}, marks=SLOW),
    pytest.param(dict(family='compressed', slow_layers='every:2'), {(): (2, 2)}, marks=SLOW),
    pytest.param(dict(family='hourglass', arm='slow_frozen', hourglass_pool='linear',
                      hourglass_upsample='linear'),
                 {('pre',): (1, 0), ('slow', 'inner'): (1, 3), ('post',): (1, 0)}, marks=SLOW),
], ids=str)
def test_families_scanned_equal_unrolled(overrides, groups):
  """Every family scans its stacks of layers (the hourglass: each stage) and computes the same."""
  cfg = config(scan_layers=True, **overrides)
  assert models.layer_groups(cfg) == groups
  scanned, unrolled = (models.build(c, rngs=3) for c in (cfg, config(**overrides)))
  stacked = {path[:path.index('stack')] for path, _ in nnx.to_flat_state(nnx.state(scanned))
             if 'stack' in path}
  assert stacked == {prefix for prefix, (_, r) in groups.items() if r}
  assert_same_model(unrolled, scanned)
  twin = flat(nnx.state(models.unrolled(scanned), nnx.Param))  # What decoding runs on.
  want = flat(nnx.state(unrolled, nnx.Param))
  assert twin.keys() == want.keys()
  for path, value in want.items():
    np.testing.assert_array_equal(twin[path], value, err_msg=str(path))


def assert_same_model(unrolled, scanned) -> None:
  """Logits, loss and gradients (in the unrolled layout) agree with the gates opened."""
  tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, VOCAB)
  open_gates(unrolled)
  open_gates(scanned)
  ((loss_u, logits_u), grads_u), ((loss_s, logits_s), grads_s) = (
      loss_and_grads(m, tokens) for m in (unrolled, scanned))
  np.testing.assert_allclose(logits_s, logits_u, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
  want, got = flat(grads_u), flat(scan.unstack_layers(grads_s))
  assert set(got) == set(want)
  for path in want:
    np.testing.assert_allclose(got[path], want[path], atol=1e-6, rtol=1e-5, err_msg=str(path))


@pytest.mark.slow  # Logits and gradients: the default suite's representative above.
@pytest.mark.parametrize('family,arm,slow_layers', [
    ('fastslow', 'coupled', 'every:2'), ('fastslow', 'gate_frozen', 'all'),
    ('hourglass', 'coupled', 'all'), ('fastslow', 'dense', 'all'), ('fastslow', 'coupled', 'all'),
    ('fastslow', 'slow_frozen', 'all'), ('compressed', 'coupled', 'every:2'),
])
def test_scanned_train_steps_equal_unrolled(family, arm, slow_layers):
  """Two steps of the real train step (AdamW, clipping, frozen arms) from the same seed; the
  second runs with the gates the first opened, so the slow path's updates are compared too."""
  tokens = jax.random.randint(jax.random.key(4), (2, 33), 0, 64)
  results = {}
  for scan_layers in (False, True):
    name = f'fastslow:family={family},arm={arm},size=tiny'
    config = runtime.resolve_config(configlib.load(name, {
        'model.num_layers': 5, 'model.slow_layers': slow_layers, 'model.gate': 'channel',
        'model.seq_len': 32, 'model.P': 4, 'model.vocab_size': 64, 'model.scan_layers': scan_layers,
        'batch_size': 2, 'optim.warmup_steps': 0}), num_devices=1)
    setup = runtime.TrainSetup(config, jax.devices()[:1])
    state, step = setup.init_state(), setup.compile_train_step(2)
    initial = {path: value.copy() for path, value in flat(state.params).items()}
    with setup.activate():
      for _ in range(2):
        state, metrics = step(state, tokens)
    results[scan_layers] = (setup.model_config, initial, state.params, float(metrics['loss']))
  unrolled_config, initial, want, want_loss = results[False]
  got, got_loss = models.convert_layout(results[True][2], unrolled_config), results[True][3]
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  want, got = flat(want), flat(got)
  assert set(got) == set(want)
  # AdamW normalises each element's step, so an element whose gradient is near zero (below Adam's
  # eps) moves by an amount that rounding can change: measured up to 1e-5 on 1 of 16384 weights,
  # against steps of lr = 3e-3. A layout bug moves most elements by a step, so: all but a few
  # elements per tensor within 1e-6, and those within one step of lr.
  lr = config.optim.lr
  for path, value in want.items():
    np.testing.assert_allclose(got[path], value, atol=lr, rtol=0, err_msg=str(path))
    off = np.abs(np.asarray(got[path]) - np.asarray(value)) > 1e-6 + 1e-5 * np.abs(value)
    assert off.mean() <= 1e-3, (path, int(off.sum()), off.size)
  if arm == 'coupled':  # The slow path took part: its parameters moved.
    assert any(not np.array_equal(want[p], initial[p]) for p in want if 'slow' in str(p))


def test_forward_is_one_scan_over_the_repeats():
  cfg = config(slow_layers='every:2', num_layers=9, scan_layers=True)
  model = models.build(cfg, rngs=0)
  graphdef, params = nnx.split(model)
  tokens = jnp.zeros((1, 16), jnp.int32)
  jaxpr = jax.make_jaxpr(lambda p: nnx.merge(graphdef, p)(tokens))(params)
  scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'scan']
  assert len(scans) == 1 and scans[0].params['length'] == 4  # (fast, slow) x 4, 1 unscanned.


def test_layout_conversion_round_trips_and_keeps_axis_names():
  cfg = config(slow_layers='every:2', scan_layers=True)
  scanned = nnx.state(models.build(cfg, rngs=5), nnx.Param)
  unrolled = nnx.state(models.build(config(slow_layers='every:2'), rngs=5), nnx.Param)
  converted = models.convert_layout(scanned, config(slow_layers='every:2'))
  assert flat(converted).keys() == flat(unrolled).keys()
  for path, value in flat(unrolled).items():
    np.testing.assert_array_equal(flat(converted)[path], value)
  back = models.convert_layout(converted, cfg)
  for (path, a), (path_b, b) in zip(nnx.to_flat_state(back), nnx.to_flat_state(scanned)):
    assert path == path_b
    np.testing.assert_array_equal(a[...], b[...])
    assert a.get_metadata('out_sharding') == b.get_metadata('out_sharding')
    if path[0] == 'stack':
      assert a.get_metadata('out_sharding')[0] == 'layers' and a.shape[0] == 2
  # Plain arrays (as restored from a checkpoint) convert too.
  arrays = jax.tree.map(lambda v: v[...], scanned, is_leaf=lambda x: isinstance(x, nnx.Variable))
  plain = scan.unstack_layers(arrays)
  for path, value in flat(unrolled).items():
    np.testing.assert_array_equal(flat(plain)[path], value)


@pytest.mark.slow
def test_a_scanned_checkpoint_restores_in_either_layout(tmp_path):
  """A run trained with scanned layers, restored from its checkpoint unrolled (and as trained):
  the same logits, and the unrolled layout is what an unscanned model of the run would hold."""
  config = configlib.load('fastslow:arm=coupled,size=tiny,P=4', {
      'model.scan_layers': True, 'model.num_layers': 3, 'model.seq_len': 32, 'model.d_model': 32,
      'model.mlp_dim': 64, 'model.num_heads': 2, 'batch_size': 4, 'total_steps': 3,
      'log_every': 1, 'eval_every': 3, 'eval_batches': 1, 'checkpoint_every': 3,
      'data.num_train_windows': 64, 'data.num_val_windows': 16, 'mesh.data': 1})
  train.train(config, str(tmp_path), devices=jax.devices()[:1])
  restored = {scan: restoring.restore(str(tmp_path), devices=jax.devices()[:1], mesh='1,1,1',
                                     scan_layers=scan) for scan in (None, False)}
  assert restored[None].setup.model_config.scan_layers
  assert not restored[False].setup.model_config.scan_layers
  assert restored[None].step == restored[False].step == 3
  unscanned = nnx.eval_shape(lambda: models.build(restored[False].setup.model_config))
  paths = lambda state: {path for path, _ in nnx.to_flat_state(state)}
  assert paths(restored[False].params) == paths(nnx.state(unscanned, nnx.Param))
  vocab = restored[None].setup.model_config.vocab_size
  tokens = jax.random.randint(jax.random.key(0), (2, 32), 0, vocab)
  logits = {scan: np.asarray(r.model()(tokens)) for scan, r in restored.items()}
  np.testing.assert_allclose(logits[False], logits[None], atol=1e-5, rtol=1e-5)
  assert any(g != 0 for g in models.gate_values(restored[False].params).values())  # Slow paths on.


def test_stacked_parameters_shard_like_their_layers():
  cfg = config(scan_layers=True)
  abstract = nnx.eval_shape(lambda: models.build(cfg, rngs=0))
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2}, jax.devices()[:8])
  specs = {path: s.spec for path, s in nnx.to_flat_state(sharding.logical_shardings(
      nnx.state(abstract, nnx.Param), mesh, sharding.check_rules(()
      + tuple((a, None) for a in sharding.LOGICAL_AXES if a not in ('embed', 'heads'))
      + (('embed', 'fsdp'), ('heads', 'tensor')))))}
  assert specs[('stack', 0, 'fast', 'wq')] == jax.sharding.PartitionSpec(None, 'fsdp', 'tensor', None)


@pytest.mark.slow
@pytest.mark.parametrize('scan_layers,window', [(True, 0), (False, 0), (True, 5)])
def test_remat_policies_give_identical_gradients(scan_layers, window):
  tokens = jax.random.randint(jax.random.key(2), (2, 17), 0, VOCAB)
  results = {}
  for policy in models.REMAT_POLICIES:
    model = models.build(config(remat=policy, num_layers=3, scan_layers=scan_layers,
                                fast_window=window), rngs=0)
    open_gates(model)
    results[policy] = loss_and_grads(model, tokens)
  for policy in models.REMAT_POLICIES:
    chex.assert_trees_all_close(results[policy], results['none'], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_remat_policies_differ_in_what_the_backward_pass_keeps():
  """The policies are not all the same program: saved residuals shrink from none to full."""
  tokens = jax.random.randint(jax.random.key(2), (2, 17), 0, VOCAB)
  saved = {}
  for policy in models.REMAT_POLICIES:
    model = models.build(config(remat=policy, num_layers=2), rngs=0)
    graphdef, params = nnx.split(model)
    fn = lambda p: nnx.merge(graphdef, p)(tokens).sum()
    _, vjp = jax.vjp(fn, params)
    saved[policy] = sum(x.size for x in jax.tree.leaves(vjp))
  assert saved['full'] < saved['minimal'] < saved['none']
  assert saved['full'] < saved['dots_saveable'] < saved['none']


def test_older_boolean_remat_still_reads():
  assert config(remat=True).remat == 'full' and config(remat=False).remat == 'none'
  with pytest.raises(ValueError, match='model.remat'):
    config(remat='some')
