"""Defaults shared by the config files: data fields and sharding rules. Imports no jax."""

import ml_collections

# Logical axis -> mesh axes (data, fsdp, tensor); None replicates. See `fastslow_jax.sharding`.
SHARDING_RULES = (
    ('batch', ('data', 'fsdp')),
    ('length', None),
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv', None),
    ('mlp', 'tensor'),
    ('norm', None),
    ('layers', None),  # The stacked axis of scanned layers.
    ('compress', None),  # Hidden width of the compressed family's block MLPs (small).
)


def default_data_config() -> ml_collections.ConfigDict:
  """All data fields with their defaults; `kind` selects the source, the others are ignored."""
  return ml_collections.ConfigDict(dict(
      kind='synthetic',  # synthetic | text | tfds | tokens (fastslow_jax.data.KINDS)
      shuffle=True,  # Read the windows in a seeded order, reshuffled each epoch (else in order).
      # text / tfds without a validation split: validation is this last fraction of the stream.
      # Also prepare's default share of documents held out for validation.
      val_fraction=0.05,
      # text: local files, comma-separated paths or globs; UTF-8 bytes + end-of-document (257).
      # tokens: a directory written by `python -m fastslow_jax.data.prepare` (any tokenizer;
      # windows read from its shards on demand, so memory does not grow with the corpus).
      path='',
      # tfds: a dataset prepared (file_format=array_record) in tfds_data_dir ('' = TFDS default),
      # 'name', 'name/config' or 'name:version'; read with tfds.data_source, no TensorFlow.
      tfds_name='', tfds_data_dir='', tfds_text_feature='text', tfds_train_split='train',
      tfds_val_split='validation',
      # synthetic: a hidden slow regime (switches with probability 1/regime_period per token)
      # selects which first-order Markov chain (Dirichlet(concentration) rows, fixed by
      # source_seed) emits the next token.
      vocab_size=64, num_regimes=4, regime_period=16, concentration=0.3, source_seed=1234,
      num_train_windows=20_000, num_val_windows=512,
  ))
