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

LayerFactory = Callable[..., tf_keras.layers.Layer]
_F = TypeVar("_F", bound=LayerFactory)

_FACTORIES: dict[str, LayerFactory] = {}  # canonical name -> factory
_LOOKUP: dict[str, str] = {}  # normalized name or alias -> canonical name


def normalize_name(name: str) -> str:
  """The lookup key of a layer name: lower case, no ``_``, ``-`` or spaces."""
  if not isinstance(name, str):
    raise TypeError("A normalization-activation name must be a string, e.g. "
                    f"'evonorm_b0'. Received: {name!r} of type "
                    f"{type(name).__name__}.")
  return "".join(ch for ch in name.lower() if ch not in "_- ")


def register_norm_activation(name: str, factory: _F | None = None, *,
                             aliases: tuple[str, ...] = (),
                             overwrite: bool = False):
  """Registers a layer factory (usually a layer class) under ``name``.

  Usable as a decorator (``@register_norm_activation("evonorm_b0")``) or a
  call (``register_norm_activation("my_layer", MyLayer)``).

  Args:
    name: canonical name, listed by :func:`available_norm_activations`.
    factory: a callable returning a new ``tf_keras.layers.Layer``.
    aliases: further names that resolve to this one.
    overwrite: replace an existing registration of the same name (the layer
      search uses this when a searched layer is re-registered).

  Raises:
    ValueError: if ``name`` or an alias is already taken and not
      ``overwrite``.
  """

  def decorate(fn: _F) -> _F:
    if not callable(fn):
      raise TypeError(f"register_norm_activation({name!r}): the factory must "
                      f"be callable. Received: {fn!r}.")
    keys = [normalize_name(n) for n in (name, *aliases)]
    for key, label in zip(keys, (name, *aliases)):
      owner = _LOOKUP.get(key)
      if owner is not None and not (overwrite and owner == name):
        raise ValueError(
            f"The normalization-activation name {label!r} is already "
            f"registered (as {owner!r}). Choose another name, or pass "
            "overwrite=True to replace it.")
    _FACTORIES[name] = fn
    for key in keys:
      _LOOKUP[key] = name
    return fn

  return decorate if factory is None else decorate(factory)


def unregister_norm_activation(name: str) -> None:
  """Removes a registration and its aliases (for tests and searches)."""
  canonical = resolve_name(name)
  del _FACTORIES[canonical]
  for key in [k for k, v in _LOOKUP.items() if v == canonical]:
    del _LOOKUP[key]


def available_norm_activations() -> list[str]:
  """The canonical names of every registered layer, sorted."""
  return sorted(_FACTORIES)


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


def get_norm_activation_factory(name: str) -> LayerFactory:
  """The registered factory (usually the layer class) for ``name``."""
  return _FACTORIES[resolve_name(name)]


def accepted_arguments(name: str) -> frozenset[str]:
  """Constructor arguments the layer ``name`` takes, besides Keras' own.

  For a layer class, the arguments of every ``__init__`` in its hierarchy
  below ``tf_keras.layers.Layer`` (base classes take ``center``, ``scale``,
  ... through ``**kwargs``).
  """
  factory = get_norm_activation_factory(name)
  if inspect.isclass(factory):
    targets = [c.__init__ for c in factory.__mro__
               if "__init__" in vars(c) and issubclass(c, tf_keras.layers.Layer)
               and c is not tf_keras.layers.Layer
               and c.__module__.split(".")[0] != "tf_keras"]
  else:
    targets = [factory]
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
  factory = _FACTORIES[canonical]
  accepted = accepted_arguments(canonical)
  keras_args = {"name", "dtype", "trainable", "input_shape", "batch_input_shape"}
  unknown = sorted(set(kwargs) - accepted - keras_args)
  if unknown:
    raise TypeError(
        f"Normalization-activation layer {canonical!r} does not take "
        f"argument(s) {unknown}. It takes: {sorted(accepted)} and the Keras "
        f"layer arguments {sorted(keras_args)}.")
  return factory(**kwargs)


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
