"""Registry norm-activation layers at Model Garden's norm sites.

Model Garden's blocks and heads create their ``BatchNormalization`` layers in
``build``, keep them in attributes (``self._norm1``) or lists
(``DetectionHead._conv_norms``, ``RPNHead._norms`` per level and conv), and
apply an activation after some of them in ``call``. A subclass lists these
places as :class:`NormSite` rows and mixes in :class:`RegistryNormSites`:
after Model Garden's ``build``, every norm at every site is replaced by a
layer from the ``evonorm_layers`` registry, with the same name. Where an
activation follows the norm it is folded into the norm-activation layer
(``nonlinearity=True``) and the activation in ``call`` becomes the identity;
where none follows (projection shortcuts, the last norm of a residual branch,
MBConv projections, FPN outputs) the site gets ``nonlinearity=False``. Model
Garden's ``call`` runs unchanged.

::

    class BottleneckBlock(RegistryNormSites, nn_blocks.BottleneckBlock):
      NORM_SITES = (
          NormSite("_norm0"),                                # shortcut
          NormSite("_norm1", "_activation", "_activation1"),
          NormSite("_norm2", "_activation", "_activation2"),
          NormSite("_norm3", residual_branch_end=True))

    class DetectionHead(RegistryNormSites, instance_heads.DetectionHead):
      NORM_SITES = (
          NormSite("_conv_norms", "config:activation", "_activation"),
          NormSite("_fc_norms", "config:activation", "_activation"))
"""

from __future__ import annotations

import dataclasses

import tf_keras

import evonorm_layers

_LINEAR = (None, "linear", "identity")


@dataclasses.dataclass(frozen=True)
class NormSite:
  """Where a Model Garden layer keeps norms, and what follows them.

  Attributes:
    norm: attribute holding a norm layer, or a list (possibly nested, one
      list per level) of them. A missing or ``None`` attribute is a site
      absent in this configuration.
    activation: where to read the name of the activation that follows each
      norm: an attribute of the layer (``"_activation"``), or
      ``"config:KEY"`` for ``layer._config_dict[KEY]``. ``None``: no
      activation follows (``nonlinearity=False``).
    activation_fn: attribute holding the activation function or layer that
      ``call`` applies after the norm; it becomes the identity once the
      activation is folded into the norm.
    residual_branch_end: the last norm of a residual branch: its gamma
      starts at zero with ``norm_activation.zero_init_residual``.
  """

  norm: str
  activation: str | None = None
  activation_fn: str | None = None
  residual_branch_end: bool = False


def _activation_name(layer, where: str | None):
  if where is None:
    return None
  if where.startswith("config:"):
    return layer._config_dict[where[len("config:"):]]  # pylint: disable=protected-access
  return getattr(layer, where)


def _identity_like(activation):
  if isinstance(activation, tf_keras.layers.Layer):
    return tf_keras.layers.Activation("linear")
  return tf_keras.activations.linear


def _replace(value, make):
  if isinstance(value, (list, tuple)):
    return [_replace(v, make) for v in value]
  return make(value)


class RegistryNormSites(evonorm_layers.UsesNormActivation):
  """Mixin replacing the norms at ``NORM_SITES`` after Model Garden's build.

  Args:
    norm_activation: an ``evonorm_layers.NormActivationFactory``, its fields
      as a dict or a layer name (``axis``, unless given, is the layer's
      ``_bn_axis``); serialized in ``get_config``.
  """

  NORM_SITES: tuple[NormSite, ...] = ()

  def __init__(self, *args, norm_activation=None,
               **kwargs):
    super().__init__(*args, **kwargs)
    self.use_norm_activation(norm_activation,
                             axis=getattr(self, "_bn_axis", None))

  def has_residual_branch(self) -> bool:
    """Whether the layer has a residual branch (ended by the sites marked
    ``residual_branch_end``) in this configuration; an MBConv block without
    its skip connection, for instance, has none."""
    return any(site.residual_branch_end for site in self.NORM_SITES)

  def build(self, input_shape):
    super().build(input_shape)
    frozen = getattr(self, "_bn_trainable", True) is False
    for site in self.NORM_SITES:
      norms = getattr(self, site.norm, None)
      if norms is None:
        continue
      activation = _activation_name(self, site.activation)
      folded = activation not in _LINEAR
      residual_end = site.residual_branch_end and self.has_residual_branch()

      def make(old, folded=folded, residual_end=residual_end):
        norm = self._make_norm(nonlinearity=folded, name=old.name,
                               residual_branch_end=residual_end)
        if frozen:
          norm.trainable = False
        return norm

      setattr(self, site.norm, _replace(norms, make))
      if folded and site.activation_fn is not None:
        setattr(self, site.activation_fn,
                _identity_like(getattr(self, site.activation_fn)))


def norm_layers(layer: tf_keras.layers.Layer) -> list[tf_keras.layers.Layer]:
  """Every normalization layer inside ``layer`` (registry or Keras)."""
  return [l for l in layer._flatten_layers(include_self=False, recursive=True)  # pylint: disable=protected-access
          if evonorm_layers.is_normalization_layer(l)]
