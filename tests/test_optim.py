"""Optimizer pieces: the weight-decay mask and the frozen-arm labels."""

from flax import nnx

from fastslow_jax import models, optim


def test_decay_mask_exempts_norm_scales_and_gates_only():
  model = models.build(models.ModelConfig(num_layers=1), rngs=0)
  mask = dict(nnx.to_flat_state(optim.decay_mask(nnx.state(model, nnx.Param), 'scale,gate,bias')))
  exempt = {path for path, v in mask.items() if not v.get_value()}
  assert exempt == {('blocks', 0, 'attn_norm', 'scale'), ('blocks', 0, 'mlp_norm', 'scale'),
                    ('blocks', 0, 'gate'), ('final_norm', 'scale')}
  # The SwiGLU gate projection is a matrix, not the coupling gate: it decays.
  assert mask[('blocks', 0, 'mlp', 'w_gate')].get_value()
