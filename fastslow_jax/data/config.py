"""Data config fields (`config.data`), shared by every source."""

import ml_collections

KINDS = ('synthetic', 'text', 'tfds')


def default_data_config() -> ml_collections.ConfigDict:
  """All data fields with their defaults; `kind` selects the source."""
  return ml_collections.ConfigDict(dict(
      kind='synthetic',  # synthetic | text | tfds
      val_fraction=0.05,  # text / tfds without a validation split: the tail of the stream.
      # text: local files, comma-separated paths or globs; byte-level tokens.
      path='',
      # tfds: a dataset already prepared in data_dir (array_record), read with tfds.data_source.
      tfds_name='', tfds_data_dir='', tfds_text_feature='text', tfds_train_split='train',
      tfds_val_split='validation',
      # synthetic: a hidden slow regime (expected dwell `regime_period` tokens) selecting which
      # first-order Markov chain emits the next token.
      vocab_size=64, num_regimes=4, regime_period=16, concentration=0.3, source_seed=1234,
      num_train_windows=20_000, num_val_windows=512,
  ))
