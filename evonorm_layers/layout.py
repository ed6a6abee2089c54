"""Which axes of a tensor are batch, instance (spatial) and channel axes.

Every layer of this library reads the layout of its input from one place, so
that "batch", "instance" and "group" statistics mean the same thing everywhere.

For an input of rank ``r`` with channel axis ``c``:

* axis 0 is the **batch** axis ``b``;
* axis ``c`` (``-1`` for channels-last, ``1`` for channels-first) holds the
  ``C`` **channels**;
* every other axis is an **instance** (spatial) axis: the ``w, h`` of the paper.

So the paper's index sets map to:

======================  =====================================================
paper                    axes reduced
======================  =====================================================
``(b, w, h)`` batch      every axis except the channel axis
``(w, h)`` instance      every axis except the batch and channel axes
``(w, h, c/g)`` group    the instance axes and the channels of one group
``(w, h, c)`` layer      every axis except the batch axis
======================  =====================================================

By rank (channels-last shown; channels-first moves ``C`` to axis 1):

* rank 2, ``[N, C]`` (dense features): no instance axes, so an instance
  variance is 0 and an instance second moment is ``x**2``;
* rank 3, ``[N, L, C]``: axis 1 is the one instance axis (a 1-D feature map or
  sequence; for detection heads, the RoIs of one image);
* rank 4, ``[N, H, W, C]``: the paper's case;
* rank 5, ``[N, D, H, W, C]``: three instance axes.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from absl import logging

CHANNELS_LAST = "channels_last"
CHANNELS_FIRST = "channels_first"
_DATA_FORMAT_TO_AXIS = {CHANNELS_LAST: -1, CHANNELS_FIRST: 1}


def channel_axis_for(data_format: str, *, layer_name: str = "layer") -> int:
  """Returns the channel axis (``-1`` or ``1``) for a Keras ``data_format``."""
  if data_format not in _DATA_FORMAT_TO_AXIS:
    raise ValueError(
        f"{layer_name}: `data_format` must be one of "
        f"{sorted(_DATA_FORMAT_TO_AXIS)}. Received: data_format={data_format!r}."
    )
  return _DATA_FORMAT_TO_AXIS[data_format]


def validate_axis(axis, *, layer_name: str) -> int:
  """Checks the constructor's ``axis`` argument and returns it as an int.

  Accepts an int or a one-element list/tuple (the form Model Garden and
  ``BatchNormalization`` use). Range checks against the rank happen in
  :meth:`TensorLayout.from_shape`, when the rank is known.
  """
  if isinstance(axis, (list, tuple)):
    if len(axis) != 1:
      raise ValueError(
          f"{layer_name}: `axis` must name exactly one channel axis (for "
          f"example -1 for channels-last or 1 for channels-first). "
          f"Received: axis={axis!r}."
      )
    axis = axis[0]
  if isinstance(axis, bool) or not isinstance(axis, int):
    raise TypeError(
        f"{layer_name}: `axis` must be an int (-1 for channels-last, 1 for "
        f"channels-first). Received: axis={axis!r} of type "
        f"{type(axis).__name__}."
    )
  if axis == 0:
    raise ValueError(
        f"{layer_name}: `axis` is the channel axis and cannot be 0, which is "
        "the batch axis. Use -1 for channels-last or 1 for channels-first. "
        f"Received: axis={axis}."
    )
  return axis


def validate_groups(groups, *, layer_name: str) -> int:
  if isinstance(groups, bool) or not isinstance(groups, int):
    raise TypeError(
        f"{layer_name}: `groups` must be a positive int. Received: "
        f"groups={groups!r} of type {type(groups).__name__}."
    )
  if groups < 1:
    raise ValueError(
        f"{layer_name}: `groups` must be at least 1. Received: groups={groups}."
    )
  return groups


def resolve_groups(groups: int, channels: int, *, layer_name: str) -> int:
  """The number of groups actually used for ``channels`` channels.

  As in the authors' reference code, when ``channels`` is not divisible by
  ``groups`` the count is decremented until it divides ``channels`` (so it
  never exceeds ``channels``). Channels are grouped contiguously. Logged
  at debug level per layer; networks report their fallbacks in one line
  (``evonorm_model_garden.norm_activation.check_groups_fit``).
  """
  resolved = min(groups, channels)
  while channels % resolved:
    resolved -= 1
  if resolved != groups:
    logging.debug(
        "%s: %d channels are not divisible by groups=%d; using %d groups.",
        layer_name, channels, groups, resolved)
  return resolved


@dataclasses.dataclass(frozen=True)
class TensorLayout:
  """The axes of a normalization layer's input, resolved at build time."""

  rank: int
  channel_axis: int  # non-negative
  channels: int

  @classmethod
  def from_shape(cls, shape: Sequence[int | None], axis: int, *,
                 layer_name: str) -> "TensorLayout":
    rank = len(shape)
    if rank < 2:
      raise ValueError(
          f"{layer_name} expects inputs of rank 2 or more, with a batch axis "
          f"first and a channel axis (for example [batch, height, width, "
          f"channels]). Received an input of rank {rank} with shape "
          f"{list(shape)}. Add a batch axis, or reshape to [batch, channels]."
      )
    if not -rank <= axis < rank:
      raise ValueError(
          f"{layer_name}: `axis`={axis} is out of range for inputs of rank "
          f"{rank} (shape {list(shape)}). Use -1 for channels-last or 1 for "
          "channels-first."
      )
    channel_axis = axis % rank
    if channel_axis == 0:
      raise ValueError(
          f"{layer_name}: `axis`={axis} points at the batch axis of inputs of "
          f"rank {rank}. Use -1 for channels-last or 1 for channels-first."
      )
    channels = shape[channel_axis]
    if channels is None:
      raise ValueError(
          f"{layer_name}: the channel dimension (axis {axis}) must be known "
          f"when the layer is built, to create its per-channel variables. "
          f"Received an input of shape {list(shape)}. Give the model an input "
          "with a static channel count, e.g. tf_keras.Input([None, None, 64])."
      )
    return cls(rank=rank, channel_axis=channel_axis, channels=int(channels))

  @property
  def channels_first(self) -> bool:
    return self.channel_axis == 1 and self.rank > 2

  @property
  def instance_axes(self) -> tuple[int, ...]:
    """The paper's ``(w, h)``: every axis but the batch and channel axes."""
    return tuple(a for a in range(1, self.rank) if a != self.channel_axis)

  @property
  def batch_axes(self) -> tuple[int, ...]:
    """The paper's ``(b, w, h)``: every axis but the channel axis."""
    return (0,) + self.instance_axes

  @property
  def param_shape(self) -> tuple[int, ...]:
    """Shape to which a ``[C]`` parameter is reshaped to broadcast."""
    return tuple(self.channels if a == self.channel_axis else 1
                 for a in range(1, self.rank))

  @property
  def stat_shape(self) -> tuple[int, ...]:
    """Shape of a per-(sample, channel) statistic, batch size left as -1."""
    return (-1,) + self.param_shape
