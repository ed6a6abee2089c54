"""Sampling, standing statistics, Inception Score and FID.

**IS and FID** follow the standard implementations (tensorflow-gan's
``classifier_score_from_logits`` and
``frechet_classifier_distance_from_activations``), written here because no
maintained library runs with TensorFlow 2.20 (tensorflow-gan does not import)
and every PyTorch/JAX package downloads its network at run time:

* ``IS = exp(E_x KL(p(y|x) || p(y)))`` from logits, in float64;
* ``FID = ||m - m_w||^2 + Tr(C + C_w - 2 (C C_w)^(1/2))``, with the trace of
  the matrix square root computed from the symmetric
  ``C^(1/2) C_w C^(1/2)`` (eigenvalues, as tensorflow-gan does), in float64.

**The Inception network** is read from a path the user gives
(``evaluation.inception_path``), never downloaded: either the standard
``classify_image_graph_def.pb`` (inception-2015-12-05; images fed to
``Mul:0`` at 299x299 in [-1, 1], features ``pool_3:0``, ``logits``), run one
image at a time as its reshapes fix the batch to 1, or a SavedModel directory
whose default signature maps images in [-1, 1] to ``{"pool_3", "logits"}``
(the digits quickstart caches such a classifier).

**Standing statistics** (BigGAN): for the generator's batch-dependent layers
the moving statistics are replaced by the mean of the batch statistics over
many sampled batches, recomputed on demand before evaluation.
"""

from __future__ import annotations

import os
import weakref

import numpy as np
import tensorflow as tf

import evonorm_layers

INCEPTION_SIZE = 299
GRAPH_INPUT = "Mul:0"
GRAPH_POOL = "pool_3:0"
GRAPH_LOGITS = "logits:0"


# -- sampling -----------------------------------------------------------------


def truncated_noise(rng: np.random.Generator, batch: int, z_dim: int,
                    truncation: float | None) -> np.ndarray:
  """Standard normal noise; with the truncation trick, values with
  ``|z| > truncation`` are resampled (BigGAN)."""
  z = rng.standard_normal((batch, z_dim))
  if truncation:
    outside = np.abs(z) > truncation
    while outside.any():
      z[outside] = rng.standard_normal(int(outside.sum()))
      outside = np.abs(z) > truncation
  return z.astype(np.float32)


def sample(generator, num: int, batch_size: int, num_classes: int,
           truncation: float | None = None, labels: np.ndarray | None = None,
           seed: int = 0):
  """``num`` images (uint8 [N, H, W, 3]) and their labels, in inference mode.

  Labels cycle through the classes unless given.
  """
  rng = np.random.default_rng(seed)
  z_dim = generator.config_dict["z_dim"]
  if labels is None:
    labels = np.arange(num) % num_classes
  call = inference_function(generator)
  images = []
  for start in range(0, num, batch_size):
    y = np.asarray(labels[start:start + batch_size], np.int32)
    z = truncated_noise(rng, len(y), z_dim, truncation)
    images.append(to_uint8(call(tf.constant(z), tf.constant(y)).numpy()))
  return np.concatenate(images), np.asarray(labels)


_INFERENCE = weakref.WeakKeyDictionary()


def inference_function(generator):
  """``generator([z, labels], training=False)`` as one function traced once
  per generator, for any batch size (image summaries during training and
  every evaluation reuse it instead of tracing the generator again)."""
  if generator not in _INFERENCE:
    z_dim = generator.config_dict["z_dim"]
    held = weakref.ref(generator)  # the cache must not keep it alive
    _INFERENCE[generator] = tf.function(
        lambda z, y: held()([z, y], training=False),
        input_signature=[tf.TensorSpec([None, z_dim], tf.float32),
                         tf.TensorSpec([None], tf.int32)])
  return _INFERENCE[generator]


def to_uint8(images: np.ndarray) -> np.ndarray:
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, rows: int) -> np.ndarray:
  """``[N, H, W, C]`` -> one ``[rows * H, (N / rows) * W, C]`` image."""
  n, h, w, c = images.shape
  cols = n // rows
  grid = images[:rows * cols].reshape(rows, cols, h, w, c)
  return grid.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


# -- standing statistics --------------------------------------------------------


def accumulate_standing_statistics(generator, num_batches: int,
                                   batch_size: int, num_classes: int,
                                   truncation: float | None = None,
                                   seed: int = 0) -> int:
  """Sets the moving statistics of the generator's batch-dependent layers to
  the mean of their batch statistics over ``num_batches`` sampled batches.

  Each batch folds in with momentum ``i / (i + 1)``, so after ``n`` batches
  every moving statistic is the plain mean of the ``n`` batch statistics,
  whatever it held before. Returns the number of layers updated.
  """
  layers = [l for l in generator.norm_layers()
            if isinstance(l, evonorm_layers.BatchDependentNormActivation)]
  if not layers:
    return 0
  momenta = [l.momentum for l in layers]
  rng = np.random.default_rng(seed)
  z_dim = generator.config_dict["z_dim"]
  try:
    for i in range(num_batches):
      for layer in layers:
        layer.momentum = i / (i + 1)
      z = truncated_noise(rng, batch_size, z_dim, truncation)
      y = rng.integers(0, num_classes, batch_size).astype(np.int32)
      generator([tf.constant(z), tf.constant(y)], training=True)  # eager
  finally:
    for layer, momentum in zip(layers, momenta):
      layer.momentum = momentum
  return len(layers)


# -- IS and FID -----------------------------------------------------------------


def inception_score(logits: np.ndarray) -> float:
  """``exp(E_x KL(p(y|x) || p(y)))`` from classifier logits, in float64."""
  logits = np.asarray(logits, np.float64)
  log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
  p = np.exp(log_p)
  log_marginal = np.log(np.mean(p, axis=0, keepdims=True))
  kl = np.sum(p * (log_p - log_marginal), axis=1)
  return float(np.exp(np.mean(kl)))


def class_agreement(logits: np.ndarray, labels: np.ndarray) -> float:
  """The fraction of samples a classifier labels as the class they were
  conditioned on: does a class-conditional generator draw the class it is
  asked for? (IS and FID cannot tell: a generator that draws a perfect 7
  when asked for a 3 scores as well.)"""
  logits, labels = np.asarray(logits), np.asarray(labels)
  if len(logits) != len(labels):
    raise ValueError(f"{len(logits)} logits but {len(labels)} labels.")
  return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma: np.ndarray, sigma_w: np.ndarray) -> float:
  """``Tr((sigma sigma_w)^(1/2))`` as tensorflow-gan computes it:
  ``Tr((sigma^(1/2) sigma_w sigma^(1/2))^(1/2))`` (symmetric, same
  eigenvalues as ``sigma sigma_w``)."""
  root = _symmetric_sqrt(sigma)
  inner = root @ sigma_w @ root
  values = np.linalg.eigvalsh((inner + inner.T) / 2.0)
  return float(np.sum(np.sqrt(np.clip(values, 0.0, None))))


def frechet_distance(activations: np.ndarray,
                     activations_w: np.ndarray) -> float:
  """FID between two sets of classifier activations ``[N, D]``, float64."""
  a = np.asarray(activations, np.float64)
  b = np.asarray(activations_w, np.float64)
  mu, mu_w = a.mean(axis=0), b.mean(axis=0)
  sigma, sigma_w = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  return float(np.sum((mu - mu_w) ** 2) + np.trace(sigma) + np.trace(sigma_w)
               - 2.0 * trace_sqrt_product(sigma, sigma_w))


# -- the classifier ---------------------------------------------------------------


class Classifier:
  """``classifier(images uint8 [N, H, W, 3]) -> (pool [N, D], logits)``."""

  def __init__(self, path: str, input_size: int | None = None):
    if not path:
      raise ValueError(
          "IS and FID need an Inception network and nothing is downloaded: "
          "set evaluation.inception_path to a local "
          "classify_image_graph_def.pb (inception-2015-12-05) or a "
          "SavedModel whose signature maps images in [-1, 1] to "
          "{'pool_3', 'logits'}.")
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(
          f"evaluation.inception_path={path!r} does not exist. Give the "
          "path of classify_image_graph_def.pb or of a SavedModel directory.")
    self.path = path
    if tf.io.gfile.isdir(path):
      # Kept: the signature reads the loaded object's variables.
      self._loaded = tf.saved_model.load(path)
      self._fn, self.input_size = self._saved_model(self._loaded, input_size)
    else:
      self._fn, self.input_size = self._graph_def(path), INCEPTION_SIZE

  @staticmethod
  def _saved_model(loaded, input_size):
    signature = loaded.signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    spec = signature.structured_input_signature[1][name]
    size = input_size or spec.shape[1] or INCEPTION_SIZE

    def run(images):
      outputs = signature(**{name: images})
      pool = outputs.get("pool_3", outputs.get("pool"))
      return tf.reshape(pool, [tf.shape(pool)[0], -1]), outputs["logits"]

    return run, size

  @staticmethod
  def _graph_def(path):
    graph_def = tf.compat.v1.GraphDef()
    with tf.io.gfile.GFile(path, "rb") as f:
      try:
        graph_def.ParseFromString(f.read())
      except Exception:  # pylint: disable=broad-except  (protobuf's DecodeError)
        graph_def = None
    names = {node.name for node in graph_def.node} if graph_def else set()
    if not {GRAPH_INPUT, GRAPH_POOL, GRAPH_LOGITS} <= {
        f"{n}:0" for n in names}:
      raise ValueError(
          f"evaluation.inception_path={path!r} is not Inception's "
          "classify_image_graph_def.pb (inception-2015-12-05, with "
          f"{GRAPH_INPUT}, {GRAPH_POOL} and {GRAPH_LOGITS}): pass that file "
          "or a SavedModel directory whose signature maps images in [-1, 1] "
          "to {'pool_3', 'logits'}.")

    def import_graph(image):
      pool, logits = tf.compat.v1.import_graph_def(
          graph_def, input_map={GRAPH_INPUT: image},
          return_elements=[GRAPH_POOL, GRAPH_LOGITS], name="inception")
      return pool, logits

    one = tf.compat.v1.wrap_function(
        import_graph, [tf.TensorSpec([1, INCEPTION_SIZE, INCEPTION_SIZE, 3],
                                     tf.float32)])

    def run(images):
      pools, logits = tf.map_fn(
          lambda image: tuple(tf.reshape(t, [-1]) for t in one(image[None])),
          images, fn_output_signature=(tf.float32, tf.float32))
      return pools, logits

    return run

  def __call__(self, images: np.ndarray, batch_size: int = 100):
    run = tf.function(lambda x: self._fn(tf.image.resize(
        tf.cast(x, tf.float32) / 127.5 - 1.0,
        (self.input_size, self.input_size), method="bilinear")))
    pools, logits = [], []
    for start in range(0, len(images), batch_size):
      pool, logit = run(tf.constant(images[start:start + batch_size]))
      pools.append(pool.numpy())
      logits.append(logit.numpy())
    return np.concatenate(pools), np.concatenate(logits)


def evaluate(generator, classifier: Classifier, real_images: np.ndarray,
             num_samples: int, batch_size: int, num_classes: int,
             truncation: float | None = None,
             standing_statistics_batches: int = 0, seed: int = 0) -> dict:
  """Standing statistics (if asked), then IS of samples, FID to reals and,
  when the classifier knows the generator's classes (the digits classifier,
  not Inception's 1008 ImageNet outputs), class agreement. The samples'
  labels cycle through the classes (100 per class of 1000 digits)."""
  if standing_statistics_batches:
    accumulate_standing_statistics(generator, standing_statistics_batches,
                                   batch_size, num_classes, truncation, seed)
  fakes, labels = sample(generator, num_samples, batch_size, num_classes,
                         truncation, seed=seed + 1)
  fake_pool, fake_logits = classifier(fakes)
  real_pool, _ = classifier(real_images)
  results = {"IS": inception_score(fake_logits),
             "FID": frechet_distance(fake_pool, real_pool),
             "num_samples": int(num_samples)}
  if fake_logits.shape[-1] == num_classes:
    results["class_agreement"] = class_agreement(fake_logits, labels)
  return results


def save_png(image: np.ndarray, path: str):
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  tf.io.write_file(path, tf.io.encode_png(image))


