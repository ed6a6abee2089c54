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

import inspect
from typing import Callable, TypeVar

import tf_keras

from evonorm_layers.layout import channel_axis_for

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
  """Constructor arguments the layer ``name`` takes, besides Keras' own."""
  factory = get_norm_activation_factory(name)
  target = factory.__init__ if inspect.isclass(factory) else factory
  params = inspect.signature(target).parameters.values()
  return frozenset(p.name for p in params
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
