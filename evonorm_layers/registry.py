"""The one registry of normalization-activation layers, by name.

Backbones, heads, the GAN and the layer search all select their layer here,
so a layer registered once (including one the search discovers) is usable
everywhere at once::

    layer = evonorm_layers.get_norm_activation("evonorm_b0", momentum=0.99)
    evonorm_layers.available_norm_activations()  # ['bn_relu', ...]

Names are matched case-insensitively, ignoring ``_``, ``-`` and spaces, so
``"EvoNorm-B0"``, ``"evonorm_b0"`` and ``"EVONORMB0"`` are the same layer.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Mapping, TypeVar

import tf_keras

from evonorm_layers.layout import channel_axis_for
from evonorm_layers.layout import validate_groups

# What a name is registered with: usually the layer class, or any callable
# taking the layer's constructor arguments (a searched layer's graph).
LayerConstructor = Callable[..., tf_keras.layers.Layer]
_C = TypeVar("_C", bound=LayerConstructor)

_CONSTRUCTORS: dict[str, LayerConstructor] = {}  # canonical name -> it
_LOOKUP: dict[str, str] = {}  # normalized name or alias -> canonical name


def normalize_name(name: str) -> str:
  """The lookup key of a layer name: lower case, no ``_``, ``-`` or spaces."""
  if not isinstance(name, str):
    raise TypeError("A normalization-activation name must be a string, e.g. "
                    f"'evonorm_b0'. Received: {name!r} of type "
                    f"{type(name).__name__}.")
  return "".join(ch for ch in name.lower() if ch not in "_- ")


def register_norm_activation(name: str, constructor: _C | None = None, *,
                             aliases: tuple[str, ...] = (),
                             overwrite: bool = False):
  """Registers a layer constructor (usually a layer class) under ``name``.

  Usable as a decorator (``@register_norm_activation("evonorm_b0")``) or a
  call (``register_norm_activation("my_layer", MyLayer)``).

  Args:
    name: canonical name, listed by :func:`available_norm_activations`.
    constructor: a callable returning a new ``tf_keras.layers.Layer``.
    aliases: further names that resolve to this one.
    overwrite: replace an existing registration of the same name (the layer
      search uses this when a searched layer is re-registered).

  Raises:
    ValueError: if ``name`` or an alias is already taken and not
      ``overwrite``.
  """

  def decorate(fn: _C) -> _C:
    if not callable(fn):
      raise TypeError(f"register_norm_activation({name!r}): the constructor "
                      f"must be callable. Received: {fn!r}.")
    keys = [normalize_name(n) for n in (name, *aliases)]
    for key, label in zip(keys, (name, *aliases)):
      owner = _LOOKUP.get(key)
      if owner is not None and not (overwrite and owner == name):
        raise ValueError(
            f"The normalization-activation name {label!r} is already "
            f"registered (as {owner!r}). Choose another name, or pass "
            "overwrite=True to replace it.")
    _CONSTRUCTORS[name] = fn
    for key in keys:
      _LOOKUP[key] = name
    return fn

  return decorate if constructor is None else decorate(constructor)


def unregister_norm_activation(name: str) -> None:
  """Removes a registration and its aliases (for tests and searches)."""
  canonical = resolve_name(name)
  del _CONSTRUCTORS[canonical]
  for key in [k for k, v in _LOOKUP.items() if v == canonical]:
    del _LOOKUP[key]


def available_norm_activations() -> list[str]:
  """The canonical names of every registered layer, sorted."""
  return sorted(_CONSTRUCTORS)


def resolve_name(name: str) -> str:
  """The canonical name for ``name``; ValueError listing valid names if none."""
  canonical = _LOOKUP.get(normalize_name(name))
  if canonical is None:
    raise ValueError(
        f"Unknown normalization-activation layer {name!r}. Valid names: "
        f"{', '.join(available_norm_activations())}. A layer found by the "
        "layer search must be registered first (see "
        "evonorm_layers.register_norm_activation).")
  return canonical


def get_norm_activation_constructor(name: str) -> LayerConstructor:
  """What ``name`` is registered with (usually the layer class)."""
  return _CONSTRUCTORS[resolve_name(name)]


def accepted_arguments(name: str) -> frozenset[str]:
  """Constructor arguments the layer ``name`` takes, besides Keras' own.

  For a layer class, the arguments of every ``__init__`` in its hierarchy
  below ``tf_keras.layers.Layer`` (base classes take ``center``, ``scale``,
  ... through ``**kwargs``).
  """
  constructor = get_norm_activation_constructor(name)
  if inspect.isclass(constructor):
    targets = [c.__init__ for c in constructor.__mro__
               if "__init__" in vars(c) and issubclass(c, tf_keras.layers.Layer)
               and c is not tf_keras.layers.Layer
               and c.__module__.split(".")[0] != "tf_keras"]
  else:
    targets = [constructor]
  return frozenset(p.name for target in targets
                   for p in inspect.signature(target).parameters.values()
                   if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                      p.KEYWORD_ONLY))


def get_norm_activation(name: str, /, *, data_format: str | None = None,
                        **kwargs) -> tf_keras.layers.Layer:
  """A new layer of the registered kind ``name``.

  Args:
    name: a registered name (see :func:`available_norm_activations`).
    data_format: ``"channels_last"`` or ``"channels_first"``, as Keras
      convolutions take it; sets ``axis`` to -1 or 1. Give ``axis`` or
      ``data_format``, not both.
    **kwargs: constructor arguments, e.g. ``axis``, ``epsilon``,
      ``nonlinearity``, ``groups``, ``momentum``, ``synchronized``, and the
      Keras layer's own ``name`` (``name`` is positional-only here, so
      ``get_norm_activation("evonorm_b0", name="block1_norm")`` works).
      An argument the layer does not take raises a TypeError naming the
      arguments it does take.

  Raises:
    ValueError: for an unknown name, listing the valid ones.
  """
  canonical = resolve_name(name)
  if data_format is not None:
    if "axis" in kwargs:
      raise ValueError(
          f"get_norm_activation({name!r}): give `axis` or `data_format`, not "
          f"both. Received: axis={kwargs['axis']!r}, "
          f"data_format={data_format!r}.")
    kwargs["axis"] = channel_axis_for(data_format, layer_name=canonical)
  constructor = _CONSTRUCTORS[canonical]
  accepted = accepted_arguments(canonical)
  keras_args = {"name", "dtype", "trainable", "input_shape", "batch_input_shape"}
  unknown = sorted(set(kwargs) - accepted - keras_args)
  if unknown:
    raise TypeError(
        f"Normalization-activation layer {canonical!r} does not take "
        f"argument(s) {unknown}. It takes: {sorted(accepted)} and the Keras "
        f"layer arguments {sorted(keras_args)}.")
  return constructor(**kwargs)


def data_format_axis() -> int:
  """The channel axis of Keras' image data format (-1 or 1)."""
  return -1 if tf_keras.backend.image_data_format() == "channels_last" else 1


@tf_keras.saving.register_keras_serializable(package="EvoNorm")
@dataclasses.dataclass(frozen=True)
class NormActivationFactory:
  """Makes the norm-activation layers of a network from one set of settings.

  Networks (backbones, heads, the GAN, the search's proxies) hold one factory
  and call it at every norm site, so a single name switches every site::

      make_norm = NormActivationFactory("evonorm_s0", groups=8)
      x = make_norm(name="block1_norm")(x)
      y = make_norm(nonlinearity=False)(y)  # e.g. a projection shortcut

  ``groups`` applies only to grouped layers (GN, EvoNorm-S) and ``momentum``
  and ``synchronized`` only to batch-dependent ones (BN, EvoNorm-B, RS+rej):
  they are settings of the whole network, handed to the layers that take
  them. With ``zero_init_residual``, the sites a network marks as the last
  norm of a residual branch start with ``gamma = 0``, so that every residual
  block starts as the identity (``init_zero`` in the authors' ResNets). The
  layer type is checked when the factory is made, so a bad name fails before
  any model is built.
  """

  type: str = "bn_relu"
  groups: int = 32
  epsilon: float = 1e-5
  momentum: float = 0.9
  synchronized: bool = False
  axis: int = -1
  zero_init_residual: bool = False

  def __post_init__(self):
    object.__setattr__(self, "type", resolve_name(self.type))
    validate_groups(self.groups, layer_name=f"norm activation {self.type!r}")

  def __call__(self, nonlinearity: bool = True, name: str | None = None, *,
               residual_branch_end: bool = False,
               **layer_kwargs) -> tf_keras.layers.Layer:
    """A new layer for one norm site.

    Args:
      nonlinearity: False at sites without an activation after the norm.
      name: the Keras layer name.
      residual_branch_end: the site is the last norm of a residual branch
        (zero-initialised gamma with ``zero_init_residual``).
      **layer_kwargs: further constructor arguments for this site (e.g.
        ``center=False, scale=False`` for a conditional norm).
    """
    accepted = accepted_arguments(self.type)
    settings = {"groups": self.groups, "epsilon": self.epsilon,
                "momentum": self.momentum, "synchronized": self.synchronized,
                "axis": self.axis, "nonlinearity": nonlinearity}
    kwargs = {k: v for k, v in settings.items() if k in accepted}
    if residual_branch_end and self.zero_init_residual:
      kwargs["gamma_initializer"] = "zeros"
    kwargs.update(layer_kwargs)
    if name is not None:
      kwargs["name"] = name
    return get_norm_activation(self.type, **kwargs)

  @classmethod
  def from_spec(cls, spec: "str | Mapping | NormActivationFactory | None",
                **overrides) -> "NormActivationFactory":
    """A factory from a layer name, a dict of fields, or a factory."""
    if isinstance(spec, cls):
      fields = spec.as_dict()
    elif isinstance(spec, str):
      fields = {"type": spec}
    elif spec is None:
      fields = {}
    else:
      fields = dict(spec)
    return cls(**{**fields, **overrides})

  def as_dict(self) -> dict:
    """The factory's fields, e.g. to store in a Keras ``get_config``."""
    return dataclasses.asdict(self)

  # Keras serialization (``tf_keras.saving.serialize_keras_object``).
  def get_config(self) -> dict:
    return self.as_dict()

  @classmethod
  def from_config(cls, config: Mapping) -> "NormActivationFactory":
    return cls(**config)


class UsesNormActivation:
  """Mixin for the Keras layers and models built with one norm-activation
  setting (backbones, blocks, decoders, heads, the GAN's generator).

  :meth:`use_norm_activation` keeps the setting as a
  :class:`NormActivationFactory` in ``self._make_norm`` (call it at each norm
  site); ``get_config`` stores its fields as a dict under
  ``norm_activation``, the form every constructor of such a class accepts
  back (with a factory or a layer name).
  """

  def use_norm_activation(self, norm_activation, axis: int | None = None
                          ) -> NormActivationFactory:
    """Keeps ``norm_activation`` (a factory, a dict of its fields, a layer
    name or None for BN-ReLU) as a factory; a dict or name without ``axis``
    gets ``axis``, by default the channel axis of Keras' image data
    format."""
    if not isinstance(norm_activation, NormActivationFactory):
      fields = ({"type": norm_activation} if isinstance(norm_activation, str)
                else dict(norm_activation or {}))
      fields.setdefault("axis", data_format_axis() if axis is None else axis)
      norm_activation = NormActivationFactory(**fields)
    self._make_norm = norm_activation
    return norm_activation

  def get_config(self):
    return {**super().get_config(),
            "norm_activation": self._make_norm.as_dict()}
