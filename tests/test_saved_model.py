"""SavedModel and Keras round trips of a model using every registered layer."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import evonorm_layers
from tests import layer_helpers

INPUT_SHAPE = (8, 8, 3)


@pytest.fixture(scope="module")
def trained_model():
  """Conv -> layer for every registered layer, after two training steps."""
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input(INPUT_SHAPE)
  x = inputs
  for name in layer_helpers.ALL_LAYERS:
    x = tf_keras.layers.Conv2D(8, 3, padding="same", name=f"conv_{name}")(x)
    kwargs = {"groups": 4} if name in layer_helpers.GROUPED else {}
    x = evonorm_layers.get_norm_activation(name, name=name, **kwargs)(x)
  x = tf_keras.layers.GlobalAveragePooling2D()(x)
  model = tf_keras.Model(inputs, tf_keras.layers.Dense(4)(x))
  model.compile(optimizer=tf_keras.optimizers.SGD(0.01),
                loss=tf_keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
  rng = np.random.default_rng(0)
  model.fit(rng.normal(size=(16,) + INPUT_SHAPE).astype(np.float32),
            rng.integers(0, 4, 16), batch_size=8, epochs=1, verbose=0)
  probe = rng.normal(size=(5,) + INPUT_SHAPE).astype(np.float32)
  return model, probe, model(probe, training=False).numpy()


@pytest.fixture(scope="module")
def keras_saved_model(trained_model, tmp_path_factory):
  """The model in tf_keras's SavedModel format (its slowest save: a trace
  of every layer's call), written once for the tests that read it."""
  path = str(tmp_path_factory.mktemp("keras_saved_model") / "model")
  trained_model[0].save(path)
  return path


def test_moving_statistics_were_updated(trained_model):
  model, _, _ = trained_model
  for name in layer_helpers.BATCH_DEPENDENT:
    variance = model.get_layer(name).moving.get("variance")
    if variance is not None:
      assert not np.allclose(variance.numpy(), 1.0), name


def test_tf_saved_model_save_and_load(trained_model, tmp_path):
  model, probe, expected = trained_model
  tf.saved_model.save(model, str(tmp_path))
  loaded = tf.saved_model.load(str(tmp_path))
  serving = loaded.signatures["serving_default"]
  (output,) = serving(tf.constant(probe)).values()
  np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["savedmodel", "keras"])
def test_keras_save_and_load_with_and_without_custom_objects(
    trained_model, keras_saved_model, tmp_path, fmt):
  model, probe, expected = trained_model
  path = keras_saved_model
  if fmt == "keras":
    path = str(tmp_path / "model.keras")
    model.save(path)
  custom = {evonorm_layers.get_norm_activation_constructor(n).__name__:
            evonorm_layers.get_norm_activation_constructor(n)
            for n in layer_helpers.ALL_LAYERS}
  for custom_objects in (None, custom):
    loaded = tf_keras.models.load_model(path, custom_objects=custom_objects)
    for name in layer_helpers.ALL_LAYERS:
      assert type(loaded.get_layer(name)) is type(model.get_layer(name))
    np.testing.assert_allclose(loaded(probe, training=False), expected,
                               rtol=1e-5, atol=1e-5)


def test_saved_model_loads_where_evonorm_layers_is_not_installed(
    trained_model, keras_saved_model, tmp_path):
  """A served model needs TensorFlow only: load it in a process that cannot
  import evonorm_layers."""
  _, probe, expected = trained_model
  path = keras_saved_model
  np.save(tmp_path / "probe.npy", probe)
  script = textwrap.dedent(f"""
      import sys
      sys.modules["evonorm_layers"] = None  # make the import fail
      import numpy as np
      import tensorflow as tf
      import tf_keras
      probe = np.load({str(tmp_path / "probe.npy")!r})
      keras_model = tf_keras.models.load_model({str(path)!r})
      served = tf.saved_model.load({str(path)!r})
      (out,) = served.signatures["serving_default"](tf.constant(probe)).values()
      np.save({str(tmp_path / "keras.npy")!r}, keras_model(probe, training=False))
      np.save({str(tmp_path / "served.npy")!r}, out.numpy())
  """)
  subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
  for result in ("keras.npy", "served.npy"):
    np.testing.assert_allclose(np.load(tmp_path / result), expected,
                               rtol=1e-5, atol=1e-5)
