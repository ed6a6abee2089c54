"""BigGAN-deep's generator and discriminator, with any registry layer at the
generator's norm sites.

Brock, Donahue & Simonyan, "Large Scale GAN Training for High Fidelity
Natural Image Synthesis", ICLR 2019 (BigGAN-deep, appendix B). The layout is
the published one (as in the authors' BigGAN-PyTorch ``BigGANdeep.py``):

* **Generator**: ``v = concat(z, shared_embedding(y))`` (BigGAN-deep does not
  split ``z``) feeds a linear layer to ``4 x 4 x 16ch`` and every conditional
  norm; two bottleneck residual blocks per resolution (the second upsamples
  by 2, nearest), channel multipliers from ``G_ARCH``; a non-local block at
  64x64; then an unconditional norm-activation, a 3x3 convolution to 128
  channels of which the first 3 are the image (as in ``BigGANdeep.py``; its
  spectral norm is over all 128), and ``tanh``. A block is ``norm-act, 1x1 (to a quarter width), norm-act,
  [upsample], 3x3, norm-act, 3x3, norm-act, 1x1``; its skip keeps the first
  output channels and upsamples.
* **Discriminator**: a 3x3 convolution, two bottleneck residual blocks per
  resolution (the first average-pools), ReLU pre-activations, a non-local
  block at 64x64, ReLU, global sum pooling, and ``linear(h) + sum(embed(y) *
  h)`` (projection discriminator). The skip of a block average-pools and
  concatenates a 1x1 convolution for the extra channels.
* Every convolution, linear layer and the discriminator's embedding is
  spectrally normalized (one power iteration) and orthogonally initialized.

The norm sites of the generator (four per block and the output one) take
``norm_activation`` from the ``evonorm_layers`` registry; the block sites are
class-conditional (:class:`~evonorm_gan.layers.ConditionalNormActivation`).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

import evonorm_layers
from evonorm_gan import layers as gan_layers

# resolution -> (input, output) channel multipliers of each generator stage;
# the stage of index i outputs resolution 8 * 2**i.
G_ARCH = {
    32: ((4, 4, 4), (4, 4, 4)),
    64: ((16, 16, 8, 4), (16, 8, 4, 2)),
    128: ((16, 16, 8, 4, 2), (16, 8, 4, 2, 1)),
    256: ((16, 16, 8, 8, 4, 2), (16, 8, 8, 4, 2, 1)),
}
# resolution -> (input, output) channel multipliers and whether each stage
# downsamples; the first block of a stage downsamples.
D_ARCH = {
    32: ((4, 4, 4), (4, 4, 4), (True, True, False)),
    64: ((1, 2, 4, 8), (2, 4, 8, 16), (True, True, True, True)),
    128: ((1, 2, 4, 8, 16), (2, 4, 8, 16, 16), (True,) * 5),
    256: ((1, 2, 4, 8, 8, 16), (2, 4, 8, 8, 16, 16), (True,) * 6),
}
BLOCKS_PER_STAGE = 2
BOTTLENECK = 4
# BigGAN-PyTorch's output layer (BigGANdeep.py): a 3x3 convolution to 128
# channels whatever ch is, of which the image keeps the first 3.
OUTPUT_CONV_CHANNELS = 128


def check_resolution(resolution: int):
  if resolution not in G_ARCH:
    raise ValueError(f"BigGAN-deep has no architecture for resolution "
                     f"{resolution}. Choose one of {sorted(G_ARCH)}.")


@tf_keras.utils.register_keras_serializable(package="EvoNormGAN")
class GeneratorBlock(evonorm_layers.UsesNormActivation,
                     tf_keras.layers.Layer):
  """BigGAN-deep's generator block with conditional norm-activations."""

  def __init__(self, in_channels: int, out_channels: int, upsample: bool,
               norm_activation, **kwargs):
    super().__init__(**kwargs)
    self.in_channels, self.out_channels = in_channels, out_channels
    self.upsample = upsample
    make_norm = self.use_norm_activation(norm_activation, axis=-1)
    hidden = in_channels // BOTTLENECK
    self.norms = [gan_layers.ConditionalNormActivation(
        make_norm, name=f"cnorm{i + 1}") for i in range(4)]
    self.convs = [gan_layers.SNConv2D(hidden, 1, name="conv1"),
                  gan_layers.SNConv2D(hidden, 3, name="conv2"),
                  gan_layers.SNConv2D(hidden, 3, name="conv3"),
                  gan_layers.SNConv2D(out_channels, 1, name="conv4")]

  def call(self, inputs, training=None):
    x, vector = inputs
    h = x
    for i, (norm, conv) in enumerate(zip(self.norms, self.convs)):
      h = norm([h, vector], training=training)
      if i == 1 and self.upsample:
        h = _upsample(h)
      h = conv(h, training=training)
    if self.in_channels != self.out_channels:
      x = x[..., :self.out_channels]  # BigGAN-deep drops channels
    if self.upsample:
      x = _upsample(x)
    return h + x

  def get_config(self):
    return {**super().get_config(), "in_channels": self.in_channels,
            "out_channels": self.out_channels, "upsample": self.upsample}


def _upsample(x):
  return tf.repeat(tf.repeat(x, 2, axis=1), 2, axis=2)


@tf_keras.utils.register_keras_serializable(package="EvoNormGAN")
class Generator(evonorm_layers.UsesNormActivation, tf_keras.Model):
  """BigGAN-deep generator: ``G(z, labels) -> images in [-1, 1]``.

  Args:
    resolution: 32, 64, 128 or 256.
    ch: channel width multiplier (128 in the paper).
    num_classes: classes of the conditioning labels.
    norm_activation: ``evonorm_layers.NormActivationFactory`` fields (or a
      layer name) for every norm site.
    z_dim: noise dimension (128).
    shared_dim: class-embedding dimension (128).
    attention_resolutions: resolutions after whose stage a non-local block
      sits (64 in the paper).
  """

  def __init__(self, resolution: int = 128, ch: int = 128,
               num_classes: int = 1000, norm_activation="bn_relu",
               z_dim: int = 128, shared_dim: int = 128,
               attention_resolutions=(64,), **kwargs):
    super().__init__(**kwargs)
    check_resolution(resolution)
    norm = self.use_norm_activation(norm_activation, axis=-1)
    self.config_dict = dict(
        resolution=resolution, ch=ch, num_classes=num_classes,
        norm_activation=norm.as_dict(), z_dim=z_dim, shared_dim=shared_dim,
        attention_resolutions=tuple(attention_resolutions))
    ins, outs = G_ARCH[resolution]
    self.shared = tf_keras.layers.Embedding(
        num_classes, shared_dim, embeddings_initializer="orthogonal",
        name="shared")
    self.linear = gan_layers.SNDense(4 * 4 * ins[0] * ch, name="linear")
    self.stages = []
    for i, (cin, cout) in enumerate(zip(ins, outs)):
      stage = [GeneratorBlock(cin * ch, (cin if j < BLOCKS_PER_STAGE - 1
                                         else cout) * ch,
                              upsample=j == BLOCKS_PER_STAGE - 1,
                              norm_activation=norm,
                              name=f"stage{i}_block{j}")
               for j in range(BLOCKS_PER_STAGE)]
      if 8 * 2**i in attention_resolutions:
        stage.append(gan_layers.SelfAttention(name=f"stage{i}_attention"))
      self.stages.append(stage)
    self.output_norm = norm(name="output_norm")
    self.output_conv = gan_layers.SNConv2D(
        OUTPUT_CONV_CHANNELS, 3, kept_channels=3, name="output_conv")

  def call(self, inputs, training=None):
    z, labels = inputs
    vector = tf.concat([z, tf.cast(self.shared(labels), z.dtype)], axis=-1)
    ch0 = G_ARCH[self.config_dict["resolution"]][0][0] * self.config_dict["ch"]
    h = tf.reshape(self.linear(vector, training=training), [-1, 4, 4, ch0])
    for stage in self.stages:
      for layer in stage:
        if isinstance(layer, GeneratorBlock):
          h = layer([h, vector], training=training)
        else:
          h = layer(h, training=training)
    h = self.output_norm(h, training=training)
    return tf.tanh(tf.cast(self.output_conv(h, training=training),
                           tf.float32))

  def norm_layers(self):
    """Every norm-activation layer (the ones standing statistics reset)."""
    return [l for l in self._flatten_layers(include_self=False)  # pylint: disable=protected-access
            if isinstance(l, evonorm_layers.NormActivation)]

  def get_config(self):
    return dict(self.config_dict)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    return cls(**config)


@tf_keras.utils.register_keras_serializable(package="EvoNormGAN")
class DiscriminatorBlock(tf_keras.layers.Layer):
  """BigGAN-deep's discriminator block (ReLU pre-activations)."""

  def __init__(self, in_channels: int, out_channels: int, downsample: bool,
               **kwargs):
    super().__init__(**kwargs)
    self.in_channels, self.out_channels = in_channels, out_channels
    self.downsample = downsample
    hidden = out_channels // BOTTLENECK
    self.convs = [gan_layers.SNConv2D(hidden, 1, name="conv1"),
                  gan_layers.SNConv2D(hidden, 3, name="conv2"),
                  gan_layers.SNConv2D(hidden, 3, name="conv3"),
                  gan_layers.SNConv2D(out_channels, 1, name="conv4")]
    self.shortcut_conv = (
        gan_layers.SNConv2D(out_channels - in_channels, 1, name="conv_sc")
        if in_channels != out_channels else None)

  def call(self, x, training=None):
    h = x
    for i, conv in enumerate(self.convs):
      h = tf.nn.relu(h)
      if i == 3 and self.downsample:
        h = _pool(h)
      h = conv(h, training=training)
    if self.downsample:
      x = _pool(x)
    if self.shortcut_conv is not None:
      x = tf.concat([x, self.shortcut_conv(x, training=training)], axis=-1)
    return h + x

  def get_config(self):
    return {**super().get_config(), "in_channels": self.in_channels,
            "out_channels": self.out_channels, "downsample": self.downsample}


def _pool(x):
  return tf.nn.avg_pool2d(x, 2, 2, "VALID")


@tf_keras.utils.register_keras_serializable(package="EvoNormGAN")
class Discriminator(tf_keras.Model):
  """BigGAN-deep projection discriminator: ``D(images, labels) -> [N]``."""

  def __init__(self, resolution: int = 128, ch: int = 128,
               num_classes: int = 1000, attention_resolutions=(64,),
               **kwargs):
    super().__init__(**kwargs)
    check_resolution(resolution)
    self.config_dict = dict(resolution=resolution, ch=ch,
                            num_classes=num_classes,
                            attention_resolutions=tuple(attention_resolutions))
    ins, outs, downsample = D_ARCH[resolution]
    self.input_conv = gan_layers.SNConv2D(ins[0] * ch, 3, name="input_conv")
    self.stages, size = [], resolution
    for i, (cin, cout, down) in enumerate(zip(ins, outs, downsample)):
      stage = [DiscriminatorBlock((cin if j == 0 else cout) * ch, cout * ch,
                                  downsample=down and j == 0,
                                  name=f"stage{i}_block{j}")
               for j in range(BLOCKS_PER_STAGE)]
      size //= 2 if down else 1
      if size in attention_resolutions:
        stage.append(gan_layers.SelfAttention(name=f"stage{i}_attention"))
      self.stages.append(stage)
    self.linear = gan_layers.SNDense(1, name="linear")
    self.embed = gan_layers.SNEmbedding(num_classes, outs[-1] * ch,
                                        name="embed")

  def call(self, inputs, training=None):
    images, labels = inputs
    h = self.input_conv(images, training=training)
    for stage in self.stages:
      for layer in stage:
        h = layer(h, training=training)
    h = tf.reduce_sum(tf.nn.relu(h), axis=[1, 2])
    projection = tf.reduce_sum(self.embed(labels, training=training) * h,
                               axis=-1, keepdims=True)
    return tf.cast(self.linear(h, training=training) + projection,
                   tf.float32)[:, 0]

  def get_config(self):
    return dict(self.config_dict)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    return cls(**config)


def trainable_parameter_count(model: tf_keras.Model) -> int:
  """Trainable parameters (no power-iteration vectors, no moving stats)."""
  return sum(int(tf.size(v)) for v in model.trainable_variables)


def build(model: tf_keras.Model, batch_size: int = 2):
  """Creates the variables of a generator or discriminator."""
  config = model.config_dict
  labels = tf.zeros([batch_size], tf.int32)
  if isinstance(model, Generator):
    model([tf.zeros([batch_size, config["z_dim"]]), labels], training=False)
  else:
    size = config["resolution"]
    model([tf.zeros([batch_size, size, size, 3]), labels], training=False)
  return model
