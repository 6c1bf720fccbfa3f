r"""Sampling from a model: KV-cache decoding that equals the parallel forward token for token.

    from fastslow_jax.generate import generate
    generate(model, [[5, 7, 1], [2, 9]], max_new_tokens=50, temperature=0.8, top_k=40, seed=0)

    python -m fastslow_jax.generate --workdir=DIR --prompt="To be, or not" --max_new_tokens=200

One parallel pass (`LanguageModel.prefill`) runs the prompts, right-padded to a common length (each row
reads only its own tokens), and fills every layer's cache: the fast keys and values and, in slow
layers, the completed blocks' keys and values, the open block's running sum and the latest slow
output. A jitted `jax.lax.while_loop` then decodes one token per row and step
(`LanguageModel.decode`): the slow path steps only when a row completes a block of P tokens. Sampling is
greedy (temperature 0) or by temperature with top-k and top-p (nucleus) truncation, from a seed.
A row stops at `eos_id` (which it keeps) or after `max_new_tokens`.

With a local fast path (`model.fast_window` = W) the fast cache of a layer is a ring of W
entries, whatever the length; the slow path's cache holds the completed blocks (one entry per P
tokens).

Positions beyond `model.seq_len` were never trained: a prompt longer than it is refused, and a
continuation past it is allowed but said in a warning (`beyond_training`). A windowed fast path
is there exactly as in training (rotary attention depends only on how far apart two positions
are, and the window keeps that below W); a slow path (or the hourglass's shortened stack)
attends over more completed blocks than training ever showed it.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from flax import nnx

from fastslow_jax import cli, models
from fastslow_jax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is drawn from the logits: greedy when `temperature` is 0."""
  temperature: float = 0.0
  top_k: int = 0  # Keep the k most likely tokens (0: all).
  top_p: float = 1.0  # Keep the smallest set of most likely tokens whose mass reaches top_p.

  def __post_init__(self):
    if not self.temperature >= 0:
      raise UsageError(f'temperature={self.temperature} is invalid: use 0 (greedy) or more.')
    if self.top_k < 0:
      raise UsageError(f'top_k={self.top_k} is invalid: use 0 (no limit) or a positive count.')
    if not 0 < self.top_p <= 1:
      raise UsageError(f'top_p={self.top_p} is invalid: use a value in (0, 1].')


def sample_logits(key: jax.Array, logits: jax.Array, sampling: Sampling) -> jax.Array:
  """Tokens [B] int32 drawn from logits [B, V] under `sampling`."""
  logits = logits.astype(jnp.float32)
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / sampling.temperature
  if 0 < sampling.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1:
    order = jnp.argsort(-logits, axis=-1)
    probs = jax.nn.softmax(jnp.take_along_axis(logits, order, -1), axis=-1)
    # Keep a token while the mass before it is below top_p: the most likely one always stays.
    keep_sorted = jnp.cumsum(probs, -1) - probs < sampling.top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(len(order))[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, -jnp.inf)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('graphdef', 'max_new_tokens', 'cache_length',
                                             'sampling', 'eos_id'))
def _decode(graphdef, params, tokens, lengths, key, *, max_new_tokens: int, cache_length: int,
            sampling: Sampling, eos_id: int):
  """Prefill, then the while loop. Returns the new tokens [B, max_new_tokens] (-1 after a row
  stopped) and, for tests, the logits each new token was drawn from [B, max_new_tokens, V]."""
  model = nnx.merge(graphdef, params)
  rows = jnp.arange(tokens.shape[0])
  logits, caches = model.prefill(tokens, lengths, cache_length)
  logits = logits[rows, lengths - 1]
  batch, vocab = logits.shape
  out = jnp.full((batch, max_new_tokens), -1, jnp.int32)
  seen = jnp.zeros((batch, max_new_tokens, vocab), jnp.float32)

  def cond(carry):
    i, _, _, _, _, done, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    i, logits, caches, out, seen, done, key = carry
    key, draw = jax.random.split(key)
    token = sample_logits(draw, logits, sampling)
    out = out.at[:, i].set(jnp.where(done, -1, token))
    seen = seen.at[:, i].set(logits)
    done = done | (token == eos_id)
    logits, caches = model.decode(token, lengths + i, caches)
    return i + 1, logits, caches, out, seen, done, key

  carry = (jnp.int32(0), logits, caches, out, seen, jnp.zeros(batch, bool), key)
  _, _, _, out, seen, _, _ = jax.lax.while_loop(cond, body, carry)
  return out, seen


def generate(model: models.LanguageModel, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             eos_id: int | None = None, return_logits: bool = False):
  """Continues each prompt (a list of token ids) by up to `max_new_tokens` tokens.

  Returns one list of new token ids per prompt (the prompt excluded; ending with `eos_id` where a
  row drew it). `temperature=0` is greedy; `top_k` / `top_p` truncate the distribution before
  sampling; `seed` fixes the draws. With `return_logits`, also the float32 logits each new token
  was drawn from, one [n, V] array per prompt. Bad arguments raise a one-line UsageError.
  """
  sampling = Sampling(float(temperature), int(top_k), float(top_p))
  cfg = model.config
  tokens, lengths = _pad(prompts, cfg.vocab_size, cfg.seq_len)
  if max_new_tokens < 1:
    raise UsageError(f'max_new_tokens={max_new_tokens} is invalid: use a positive count.')
  if eos_id is not None and not 0 <= eos_id < cfg.vocab_size:
    raise UsageError(f'eos_id={eos_id} is not a token of the vocabulary (0..{cfg.vocab_size - 1}).')
  cache_length = tokens.shape[1] + max_new_tokens
  if cache_length > cfg.seq_len and beyond_training(cfg, cache_length):
    logging.warning(beyond_training(cfg, cache_length))
  graphdef, params = nnx.split(models.unrolled(model))
  out, seen = _decode(graphdef, params, jnp.asarray(tokens), jnp.asarray(lengths),
                      jax.random.key(seed), max_new_tokens=max_new_tokens,
                      cache_length=cache_length, sampling=sampling,
                      eos_id=-1 if eos_id is None else eos_id)
  out, seen = np.asarray(out), np.asarray(seen)
  results = [[int(t) for t in row if t >= 0] for row in out]
  if return_logits:
    return results, [seen[i, :len(r)] for i, r in enumerate(results)]
  return results


def beyond_training(cfg: models.ModelConfig, length: int) -> str | None:
  """What generating up to position `length` > seq_len means for the model, or None where
  nothing is new (a dense model with a window: its fast path only sees W relative positions)."""
  if not cfg.fast_window or cfg.fast_window > cfg.seq_len:
    return (f'Generating up to position {length}, beyond the {cfg.seq_len} positions the model '
            'was trained on.')
  if not cfg.has_slow_path:
    return None
  return (f'Generating up to position {length}, beyond model.seq_len={cfg.seq_len}: the windowed '
          f'fast path sees what it saw in training, but the slow path attends over up to '
          f'{length // cfg.P} blocks, where training showed it {cfg.seq_len // cfg.P}.')


def _pad(prompts, vocab_size: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded int32 tokens [B, L] and lengths [B]; one-line errors for bad prompts."""
  prompts = [list(p) for p in prompts]
  if not prompts:
    raise UsageError('no prompts: give at least one list of token ids.')
  for i, p in enumerate(prompts):
    if not p:
      raise UsageError(f'prompt {i} is empty: every prompt needs at least one token.')
    if len(p) > seq_len:
      raise UsageError(f'prompt {i} has {len(p)} tokens, more than model.seq_len={seq_len}: '
                       f'shorten it to at most {seq_len} tokens.')
    bad = [t for t in p if not 0 <= int(t) < vocab_size]
    if bad:
      raise UsageError(f'prompt {i} holds token {bad[0]}, outside the vocabulary '
                       f'(0..{vocab_size - 1}).')
  lengths = np.array([len(p) for p in prompts], np.int32)
  tokens = np.zeros((len(prompts), lengths.max()), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, :len(p)] = p
  return tokens, lengths


# --------------------------------------------------------------------------- CLI


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Run directory written by fastslow_jax.train.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).', lower_bound=0)
  flags.DEFINE_string('prompt', None, 'The prompt text (token ids separated by spaces for a '
                      'run on the synthetic source).')
  flags.DEFINE_string('prompt_file', None, 'Read the prompt from this file instead.')
  flags.DEFINE_integer('max_new_tokens', 200, 'Tokens to generate per sample.', lower_bound=1)
  flags.DEFINE_float('temperature', 0.8, 'Sampling temperature; 0 is greedy.', lower_bound=0.0)
  flags.DEFINE_integer('top_k', 0, 'Keep the k most likely tokens (0: all).', lower_bound=0)
  flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass (1: all).', lower_bound=0.0,
                     upper_bound=1.0)
  flags.DEFINE_integer('seed', 0, 'Seed of the draws.', lower_bound=0)
  flags.DEFINE_integer('num_samples', 1, 'Samples of the same prompt, drawn in one batch.',
                       lower_bound=1)
  flags.mark_flags_as_required(['workdir'])


def main():
  from fastslow_jax import restoring  # Heavier imports, only for the command line.
  f = flags.FLAGS
  if (f.prompt is None) == (f.prompt_file is None):
    raise UsageError('give the prompt with exactly one of --prompt or --prompt_file.')
  if f.prompt_file is not None:
    try:
      with open(f.prompt_file, encoding='utf-8') as file:
        text = file.read()
    except (OSError, UnicodeDecodeError) as e:
      raise UsageError(f'--prompt_file={f.prompt_file!r} cannot be read ({e.strerror or e}): '
                       'give a readable UTF-8 text file.') from None
  else:
    text = f.prompt
  restored = restoring.restore(f.workdir, f.step, devices=jax.local_devices()[:1])
  tokenizer = restored.source.tokenizer
  prompt = tokenizer.encode(text)
  samples = generate(restored.model(), [prompt] * f.num_samples,
                     max_new_tokens=f.max_new_tokens, temperature=f.temperature, top_k=f.top_k,
                     top_p=f.top_p, seed=f.seed, eos_id=tokenizer.eos_id)
  for i, sample in enumerate(samples):
    if f.num_samples > 1:
      print(f'--- sample {i + 1} of {f.num_samples}')
    sys.stdout.write(text + tokenizer.decode(sample) + '\n')


if __name__ == '__main__':
  cli.run(main, define_flags)
