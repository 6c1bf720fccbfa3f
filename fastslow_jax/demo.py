r"""The quick start: the model zoo at a glance, then train -> checkpoint -> evaluate on CPU.

    python -m fastslow_jax.demo [--steps=600] [--workdir=runs/demo-...]

1. Builds every family and arm at the `tiny` size and prints parameters, FLOPs per token and a
   forward pass.
2. Trains the tiny `coupled` model on the synthetic fast-slow source (a minute or two on CPU),
   with checkpoints, metrics.jsonl and TensorBoard files in the workdir.
3. Restores the checkpoint's parameters and evaluates them against the Bayes-optimal loss.
4. Prints a short sample from the trained model (KV-cache decoding, `fastslow_jax.generate`).

It runs through the same command-line plumbing as train and evaluate (`cli.run`): libraries'
INFO logging stays out of the terminal, and bad flags end in one line with exit status 2.
"""

from __future__ import annotations

import datetime
import time

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx

from fastslow_jax import cli, configlib, evaluate, generate, models, restoring, train
from fastslow_jax.rundir import RunDir


def zoo_table(vocab_size: int = 64) -> str:
  """One line per family and arm: trainable/total parameters, FLOPs per token, a forward pass."""
  lines = [f'{"family":<11} {"arm":<12} {"params":>9} {"trainable":>9} {"train GFLOP/tok":>15} '
           f'{"(slow share)":>12} {"forward":>16}']
  for family, spec in models.FAMILIES.items():
    for arm in spec.arms:
      if arm == 'dense' and family != 'fastslow':
        continue  # One dense baseline for every family.
      config = configlib.load(f'fastslow:family={family},arm={arm},size=tiny')
      config.model.vocab_size = vocab_size
      cfg = models.ModelConfig.from_mapping(config.model)
      model = models.build(cfg, rngs=0)
      trainable = models.param_count(nnx.state(model, models.trainable_filter(cfg)))
      flops = models.flops_per_token(cfg)
      logits = model(jnp.zeros((2, cfg.seq_len), jnp.int32))
      lines.append(f'{family if arm != "dense" else "(all)":<11} {arm:<12} '
                   f'{models.param_count(model):>9,} {trainable:>9,} {flops.total / 1e9:>15.4f} '
                   f'{flops.slow / flops.total:>11.1%} {str(tuple(logits.shape)):>16}')
  return '\n'.join(lines)


def sample(workdir: str, num_tokens: int = 24) -> str:
  """A short continuation of a validation window's first tokens by the trained model."""
  restored = restoring.restore(workdir, devices=jax.local_devices()[:1])
  prompt = restored.source.open('validation', seq_len=restored.config.model.seq_len)[0][:8]
  tokenizer = restored.source.tokenizer
  new = generate.generate(restored.model(), [prompt.tolist()], max_new_tokens=num_tokens,
                          temperature=0.8, seed=0)[0]
  return f'{tokenizer.decode(prompt).strip()} -> {tokenizer.decode(new).strip()}'


def define_flags() -> None:
  flags.DEFINE_integer('steps', 600, 'Training steps for the tiny coupled model.', lower_bound=1)
  flags.DEFINE_string('workdir', None, 'Run directory (default: a new one in runs/).')


def main():
  steps = flags.FLAGS.steps
  workdir = flags.FLAGS.workdir or f'runs/demo-{datetime.datetime.now():%Y%m%d-%H%M%S}'
  RunDir(workdir).check(write=True)  # Before the zoo table: a bad --workdir fails at once.
  print(f'JAX {jax.__version__} on {jax.device_count()} x {jax.devices()[0].device_kind}\n')
  print('The model zoo (size=tiny):')
  print(zoo_table(), '\n')

  config = configlib.load('fastslow:arm=coupled,size=tiny', {
      'total_steps': steps, 'eval_every': max(steps // 4, 1),
      'checkpoint_every': max(steps // 4, 1), 'log_every': 25,
  })
  print(f'Training tiny coupled (P={config.model.P}) for {steps} steps on the synthetic '
        f'source into {workdir} ...')
  start = time.perf_counter()
  last = train.train(config, workdir)
  print(f'trained in {time.perf_counter() - start:.0f} s: final train loss {last["loss"]:.4f}, '
        f'{last["tokens_per_sec"]:,.0f} tokens/s\n')

  print('Evaluating the restored checkpoint:')
  print(evaluate.format_result(evaluate.evaluate(workdir)))
  print(f'\nA sample (token ids of the synthetic source, temperature 0.8): {sample(workdir)}')
  print(f'\nMetrics: {workdir}/metrics.jsonl; TensorBoard: tensorboard --logdir {workdir}')


if __name__ == '__main__':
  cli.run(main, define_flags)
