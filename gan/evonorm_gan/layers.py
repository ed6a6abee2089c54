"""BigGAN's building blocks: spectral normalization, conditional norms and
self-attention.

Brock, Donahue & Simonyan, "Large Scale GAN Training for High Fidelity
Natural Image Synthesis", ICLR 2019 (https://arxiv.org/abs/1809.11096);
Miyato et al., "Spectral Normalization for Generative Adversarial Networks",
ICLR 2018 (https://arxiv.org/abs/1802.05957).

**Spectral normalization** (:class:`SNConv2D`, :class:`SNDense`,
:class:`SNEmbedding`) reparameterizes a weight as ``W / sigma(W)``, with
``sigma`` estimated by one power iteration per training call (``u`` is a
non-trainable variable; ``u`` and ``v`` carry no gradient, ``W`` does, through
``sigma``), as in the paper and BigGAN. tf_keras' own ``SpectralNormalization``
wrapper instead overwrites the kernel with ``W / sigma`` and passes no
gradient through ``sigma``, a different method, so it is not used.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

import evonorm_layers

_serializable = tf_keras.utils.register_keras_serializable(package="EvoNormGAN")
ORTHOGONAL = "orthogonal"


class _SpectralNorm:
  """Mixin: ``spectral_kernel(training)`` is the kernel divided by its
  largest singular value (one power iteration per training call)."""

  def _build_u(self, kernel):
    self.u = self.add_weight(
        name="sn_u", shape=(1, kernel.shape[-1]),
        initializer=tf_keras.initializers.RandomNormal(stddev=1.0),
        trainable=False, experimental_autocast=False,
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.MEAN)

  def spectral_kernel(self, kernel, training):
    """``training``: a Python bool (or anything Keras passes, resolved to
    one); the power iteration updates ``u`` only in training."""
    w = tf.reshape(tf.cast(kernel, tf.float32), [-1, kernel.shape[-1]])
    u = tf.math.l2_normalize(tf.convert_to_tensor(self.u))
    v = tf.math.l2_normalize(tf.matmul(u, w, transpose_b=True))
    if training:
      u = tf.math.l2_normalize(tf.matmul(v, w))
      self.u.assign(u)
    u, v = tf.stop_gradient(u), tf.stop_gradient(v)
    sigma = tf.matmul(tf.matmul(v, w), u, transpose_b=True)[0, 0]
    # In the layer's compute dtype: under mixed precision the variable's
    # dtype is float32 and its reads (and the layer's inputs) bfloat16.
    return tf.cast(tf.cast(kernel, tf.float32) / sigma, self.compute_dtype)


@_serializable
class SNConv2D(_SpectralNorm, tf_keras.layers.Conv2D):
  """``Conv2D`` with a spectrally normalized kernel (orthogonal init).

  ``kept_channels``: the layer outputs only the first ``kept_channels`` of
  its ``filters`` output channels (BigGAN-deep's output layer is a
  128-channel convolution of which the image keeps 3). The spectral norm is
  still that of the whole kernel, so the dropped channels' weights shape the
  output through ``sigma``; only the kept channels are convolved, which gives
  the same outputs and gradients as convolving all and slicing.
  """

  def __init__(self, filters, kernel_size, kept_channels: int | None = None,
               **kwargs):
    kwargs.setdefault("padding", "same")
    kwargs.setdefault("kernel_initializer", ORTHOGONAL)
    super().__init__(filters, kernel_size, **kwargs)
    if kept_channels is not None and not 0 < kept_channels <= filters:
      raise ValueError(f"`kept_channels` must be in [1, filters={filters}]. "
                       f"Received: kept_channels={kept_channels}")
    self.kept_channels = kept_channels

  def build(self, input_shape):
    super().build(input_shape)
    self._build_u(self.kernel)

  def call(self, inputs, training=None):
    kernel = self.spectral_kernel(self.kernel, _resolve_training(training))
    bias = self.bias if self.use_bias else None
    if self.kept_channels is not None:
      kernel = kernel[..., :self.kept_channels]
      bias = None if bias is None else bias[:self.kept_channels]
    outputs = self.convolution_op(inputs, kernel)
    if bias is not None:
      outputs = tf.nn.bias_add(outputs, bias,
                               data_format=self._tf_data_format)
    return outputs

  def compute_output_shape(self, input_shape):
    shape = super().compute_output_shape(input_shape)
    if self.kept_channels is None:
      return shape
    return tf.TensorShape(shape[:-1] + [self.kept_channels])

  def get_config(self):
    return {**super().get_config(), "kept_channels": self.kept_channels}


@_serializable
class SNDense(_SpectralNorm, tf_keras.layers.Dense):
  """``Dense`` with a spectrally normalized kernel (orthogonal init)."""

  def __init__(self, units, **kwargs):
    kwargs.setdefault("kernel_initializer", ORTHOGONAL)
    super().__init__(units, **kwargs)

  def build(self, input_shape):
    super().build(input_shape)
    self._build_u(self.kernel)

  def call(self, inputs, training=None):
    outputs = tf.matmul(inputs, self.spectral_kernel(
        self.kernel, _resolve_training(training)))
    if self.use_bias:
      outputs = tf.nn.bias_add(outputs, self.bias)
    return outputs


@_serializable
class SNEmbedding(_SpectralNorm, tf_keras.layers.Embedding):
  """Class embedding with a spectrally normalized matrix (the projection
  discriminator's ``embed(y)``)."""

  def __init__(self, input_dim, output_dim, **kwargs):
    kwargs.setdefault("embeddings_initializer", ORTHOGONAL)
    super().__init__(input_dim, output_dim, **kwargs)

  def build(self, input_shape):
    super().build(input_shape)
    self._build_u(self.embeddings)

  def call(self, inputs, training=None):
    table = self.spectral_kernel(self.embeddings,
                                 _resolve_training(training))
    return tf.nn.embedding_lookup(table, tf.cast(inputs, tf.int32))


def _resolve_training(training) -> bool:
  """Keras' ``training`` argument as a Python bool (the models of this
  package are called with Python bools)."""
  if training is None:
    training = tf_keras.backend.learning_phase()
  if isinstance(training, tf.Tensor):
    raise TypeError("evonorm_gan layers take a Python bool `training`.")
  return bool(training)


@_serializable
class ConditionalNormActivation(evonorm_layers.UsesNormActivation,
                                tf_keras.layers.Layer):
  """A registry norm-activation layer made class-conditional (BigGAN's ccbn).

  ``layer(x, v)`` with the conditioning vector ``v`` (BigGAN-deep:
  ``concat(z, shared_embedding(y))``) computes gain ``1 + W_g v`` and bias
  ``W_b v`` with spectrally normalized linear maps without bias, and passes
  them as the norm's call-time ``gamma`` and ``beta``, which enter where the
  layer's formula puts its affine (``evonorm_layers.affine``). The norm
  itself has no ``gamma``/``beta`` variables.

  Args:
    norm_activation: an ``evonorm_layers.NormActivationFactory``, its fields
      as a dict, or a layer name.
    name: the layer's name.
  """

  def __init__(self, norm_activation, **kwargs):
    super().__init__(**kwargs)
    make_norm = self.use_norm_activation(norm_activation, axis=-1)
    self.norm = make_norm(name="norm", center=False, scale=False)

  def build(self, input_shape):
    channels = input_shape[0][-1]
    self.gain = SNDense(channels, use_bias=False, name="gain")
    self.bias = SNDense(channels, use_bias=False, name="bias")
    super().build(input_shape)

  def call(self, inputs, training=None):
    x, vector = inputs
    training = _resolve_training(training)
    gamma = 1.0 + self.gain(vector, training=training)
    beta = self.bias(vector, training=training)
    return self.norm(x, training=training, gamma=gamma, beta=beta)


@_serializable
class SelfAttention(tf_keras.layers.Layer):
  """BigGAN's non-local block: theta/phi to C/8, g to C/2 channels, 2x2
  max-pooling on phi and g, an output 1x1 back to C, all spectrally
  normalized, and a learned scale ``gamma`` that starts at 0."""

  def build(self, input_shape):
    channels = input_shape[-1]
    conv = lambda filters, name: SNConv2D(filters, 1, use_bias=False,
                                          name=name)
    self.theta = conv(channels // 8, "theta")
    self.phi = conv(channels // 8, "phi")
    self.g = conv(channels // 2, "g")
    self.o = conv(channels, "o")
    self.gamma = self.add_weight(name="gamma", shape=(), initializer="zeros")
    super().build(input_shape)

  def call(self, x, training=None):
    training = _resolve_training(training)
    _, height, width, channels = x.shape
    pool = lambda t: tf.nn.max_pool2d(t, 2, 2, "VALID")
    theta = tf.reshape(self.theta(x, training=training),
                       [-1, height * width, channels // 8])
    phi = tf.reshape(pool(self.phi(x, training=training)),
                     [-1, height * width // 4, channels // 8])
    g = tf.reshape(pool(self.g(x, training=training)),
                   [-1, height * width // 4, channels // 2])
    attention = tf.nn.softmax(tf.matmul(theta, phi, transpose_b=True))
    o = tf.reshape(tf.matmul(attention, g), [-1, height, width, channels // 2])
    return x + tf.cast(self.gamma, x.dtype) * self.o(o, training=training)
