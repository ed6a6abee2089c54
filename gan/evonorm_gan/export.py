"""The EMA generator as a SavedModel.

Signature ``serving_default(z, labels, truncation) -> {"images"}``: ``z``
``[N, z_dim]`` float32 standard normal noise, ``labels`` ``[N]`` int32,
``truncation`` a float32 scalar; the images (``[N, H, W, 3]``, in [-1, 1])
are ``G(truncation * clip(z, -2, 2), labels)``, the truncation convention of
BigGAN's published generators (noise truncated to [-2, 2] and scaled). The
SavedModel needs no code of this project to load and run.
"""

from __future__ import annotations

import tensorflow as tf

from evonorm_model_garden import export as model_garden_export


class _Sampler(tf.Module):
  """The generator's variables and one serving function. The Keras model is
  held in a closure, not as an attribute, so saving traces this function
  only (not every Keras layer's ``call`` for Keras' own format)."""

  def __init__(self, generator):
    super().__init__()
    self.generator_variables = list(generator.variables)
    z_dim = generator.config_dict["z_dim"]

    def serve(z, labels, truncation):
      z = truncation * tf.clip_by_value(z, -2.0, 2.0)
      return {"images": generator([z, labels], training=False)}

    self.serve = tf.function(serve, input_signature=[
        tf.TensorSpec([None, z_dim], tf.float32, name="z"),
        tf.TensorSpec([None], tf.int32, name="labels"),
        tf.TensorSpec([], tf.float32, name="truncation")])


def export_generator(generator, export_dir: str) -> str:
  """Writes ``generator`` (usually the EMA one) to ``export_dir``."""
  module = _Sampler(generator)
  # Written aside and moved in when complete; no per-layer Keras traces.
  with model_garden_export.staged(export_dir) as staging, (
      model_garden_export.signatures_only()):
    tf.saved_model.save(module, staging,
                        signatures={"serving_default": module.serve})
  return export_dir
