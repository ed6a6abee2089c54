"""Fused CPU kernels for the elementwise parts of the EvoNorm layers.

On CPU TensorFlow runs every elementwise op of an EvoNorm as its own kernel
and pass over the activation, where BN-ReLU runs one fused kernel; that, not
arithmetic, is what makes EvoNorms slower than BN-ReLU on CPU. This module
runs the elementwise part of EvoNorm-B0, B1, B2, S0, S1 and S2 (everything
after the statistics) as one C++ kernel forward and one backward
(``kernels/fused_elementwise.cc``); the statistics stay TensorFlow ops.

Build. The kernels are compiled on first use against the installed
TensorFlow (``tf.sysconfig`` flags, the C++ compiler ``$CXX`` or ``g++``) into
a cache directory, ``$EVONORM_KERNEL_CACHE`` or ``~/.cache/evonorm_layers``,
under a file lock, so parallel test and Ray workers build once. Without a
compiler, or if the build fails, the layers use the composite ops and one
warning line says why.

Where the fused path runs (``mode() == "auto"``, the default): training
steps (``training=True``) on CPU, in eager or graph mode, for channels-last
and channels-first inputs of any rank. It does not run under XLA
(``jit_compile``), on machines with a GPU or TPU, under a TPUStrategy, while
a SavedModel is being written, or in inference calls, so exported and
serving graphs contain only standard TensorFlow ops.

Switch: the environment variable ``EVONORM_FUSED=auto|on|off`` or
:func:`set_mode` / :func:`forced`. ``on`` uses the fused path wherever it can
run (inference calls included) and raises if the kernels cannot be built;
``off`` always uses the composite ops.

Gradients. The backward kernel gives first derivatives in one pass. Its own
derivative (second order: GAN gradient penalties, the search's stability
test) is plain autodiff of the composite formula, so derivatives of any
order equal those of the composite layers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from typing import Sequence

from absl import logging
import tensorflow as tf
# Internal helpers with no public equivalent: whether a function is being
# traced for XLA, and whether a SavedModel is being written.
from tensorflow.python.ops import control_flow_util  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.saved_model import save_context  # pylint: disable=g-direct-tensorflow-import

from evonorm_layers import formulas
from evonorm_layers import layout as layout_lib

MODES = ("auto", "on", "off")
ENV_MODE = "EVONORM_FUSED"
ENV_CACHE = "EVONORM_KERNEL_CACHE"

SOURCE = os.path.join(os.path.dirname(__file__), "kernels",
                      "fused_elementwise.cc")

# Kernel families (:mod:`evonorm_layers.formulas`): their operands, stacked
# as params[K, N, C], in order.
FAMILIES = {family: formulas.operand_names(family)
            for family in formulas.FAMILIES}

_mode_override: list[str] = []
_lock = threading.Lock()
_library = None
_library_error: str | None = None


# -- the switch ----------------------------------------------------------------

def mode() -> str:
  """The current mode: ``auto``, ``on`` or ``off``."""
  if _mode_override:
    return _mode_override[-1]
  value = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
  if value not in MODES:
    raise ValueError(f"{ENV_MODE}={value!r} is not a mode; set it to one of "
                     f"{', '.join(MODES)}.")
  return value


def set_mode(value: str | None) -> None:
  """Sets the mode for this process (``None``: back to ``$EVONORM_FUSED``)."""
  if value is not None and value not in MODES:
    raise ValueError(f"Unknown fused-kernel mode {value!r}; choose one of "
                     f"{', '.join(MODES)}.")
  _mode_override.clear()
  if value is not None:
    _mode_override.append(value)


@contextlib.contextmanager
def forced(value: str):
  """Context manager: the layers built or traced inside use ``value``.

  The mode is read when a layer's call is traced, so a ``tf.function`` keeps
  the path it was traced with.
  """
  if value not in MODES:
    raise ValueError(f"Unknown fused-kernel mode {value!r}; choose one of "
                     f"{', '.join(MODES)}.")
  _mode_override.append(value)
  try:
    yield
  finally:
    _mode_override.pop()


# -- building and loading --------------------------------------------------------

def _compiler() -> str | None:
  return shutil.which(os.environ.get("CXX", "g++"))


def _cpu_signature() -> str:
  """What ``-march=native`` depends on: the CPU's model and feature flags."""
  try:
    with open("/proc/cpuinfo") as f:
      lines = [l for l in f if l.startswith(("model name", "flags"))]
    return "".join(sorted(set(lines)))
  except OSError:
    return platform.processor() or platform.machine()


def _build_command(compiler: str, output: str) -> list[str]:
  return [compiler, SOURCE, "-o", output, "-shared", "-fPIC", "-O3",
          "-march=native", "-fno-math-errno", "-fno-trapping-math", "-w",
          *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]


def library_path(compiler: str) -> str:
  """Where the kernels built by ``compiler`` for this TensorFlow and CPU are
  cached."""
  cache = os.environ.get(ENV_CACHE) or os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
      "evonorm_layers")
  version = subprocess.run([compiler, "--version"], capture_output=True,
                           text=True, check=False).stdout.split("\n")[0]
  digest = hashlib.sha256()
  with open(SOURCE, "rb") as f:
    digest.update(f.read())
  for part in (tf.__version__, tf.__file__, version, _cpu_signature(),
               " ".join(_build_command(compiler, ""))):
    digest.update(part.encode())
  return os.path.join(cache, f"fused_elementwise-{digest.hexdigest()[:16]}.so")


def build() -> str:
  """Compiles the kernels (unless cached) and returns the library's path.

  Raises:
    RuntimeError: no C++ compiler, or the build failed (the message holds the
      compiler's first error).
  """
  compiler = _compiler()
  if compiler is None:
    raise RuntimeError(
        f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH; install "
        f"g++ or set CXX")
  path = library_path(compiler)
  if os.path.exists(path):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # one build per machine at a time
    if os.path.exists(path):  # built by another process meanwhile
      return path
    fd, partial = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(fd)
    try:
      result = subprocess.run(_build_command(compiler, partial),
                              capture_output=True, text=True, check=False,
                              timeout=600)
      if result.returncode != 0:
        errors = [l for l in result.stderr.splitlines() if "error" in l]
        raise RuntimeError(f"compiling {os.path.basename(SOURCE)} failed: "
                           f"{(errors or result.stderr.splitlines() or ['?'])[0]}")
      os.replace(partial, path)
    finally:
      if os.path.exists(partial):
        os.remove(partial)
  return path


def library():
  """The loaded kernels, or ``None`` (with one warning line) if they cannot be
  built here."""
  global _library, _library_error
  with _lock:
    if _library is None and _library_error is None:
      try:
        _library = tf.load_op_library(build())
      except (RuntimeError, OSError, subprocess.SubprocessError,
              tf.errors.NotFoundError) as e:
        _library_error = str(e)
        logging.warning(
            "evonorm_layers: fused CPU kernels unavailable (%s); EvoNorms use "
            "composite TensorFlow ops.", _library_error)
    return _library


def available() -> bool:
  """Whether the fused kernels are built and loaded (builds them if needed)."""
  return library() is not None


# -- dispatch ---------------------------------------------------------------------

def _on_accelerator_or_xla(x: tf.Tensor) -> str | None:
  """Why the fused path cannot run here, or ``None``."""
  if "GPU" in (x.device or "").upper() or "TPU" in (x.device or "").upper():
    return "input placed on an accelerator"
  if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices(
      "TPU"):
    return "a GPU or TPU is present"
  if tf.distribute.has_strategy() and isinstance(
      tf.distribute.get_strategy(),
      (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)):
    return "under a TPUStrategy"
  if not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(
      tf.compat.v1.get_default_graph()):
    return "compiled with XLA"
  if save_context.in_save_context():
    return "writing a SavedModel"
  return None


# Not converted by AutoGraph (strategy.run converts what it calls): plain
# Python decisions, taken while tracing.
@tf.autograph.experimental.do_not_convert
def use_fused(x: tf.Tensor, layout: layout_lib.TensorLayout,
              training) -> bool:
  """Whether a layer's call on ``x`` takes the fused path."""
  current = mode()
  if current == "off":
    return False
  if x.dtype not in (tf.float32, tf.float16, tf.bfloat16):
    return False
  if layout.channel_axis not in (1, layout.rank - 1):
    return False  # channels in the middle of the spatial axes
  if _on_accelerator_or_xla(x) is not None:
    return False
  if current == "auto" and training is not True:
    return False
  if library() is None:
    if current == "on":
      raise RuntimeError(
          f"{ENV_MODE}=on but the fused CPU kernels cannot be built: "
          f"{_library_error}")
    return False
  return True


def _per_sample_channel(t: tf.Tensor, x: tf.Tensor,
                        layout: layout_lib.TensorLayout) -> tf.Tensor:
  """A float32 operand broadcastable to the layer's statistic shape, as
  ``[N, C]``."""
  shape = tf.concat([tf.shape(x)[:1], layout.stat_shape[1:]], axis=0)
  t = tf.broadcast_to(tf.cast(t, tf.float32), shape)
  return tf.reshape(t, [-1, layout.channels])


def _composite(family: str, x: tf.Tensor, params: tf.Tensor,
               layout: layout_lib.TensorLayout, epsilon: float) -> tf.Tensor:
  """The family's formula in TensorFlow ops (for second derivatives)."""
  operands = tf.unstack(tf.reshape(
      params, [len(FAMILIES[family]), -1, *layout.stat_shape[1:]]))
  y = formulas.evaluate(family, tf.cast(x, tf.float32), operands, epsilon)
  return tf.cast(y, x.dtype)


def _op(family: str, direction: str):
  name = f"evo_norm_fused_{family}_{direction}"
  name = "".join("_" + c.lower() if c.isupper() else c for c in name)
  return getattr(library(), name.replace("__", "_"))


@tf.autograph.experimental.do_not_convert
def apply(family: str, x: tf.Tensor, layout: layout_lib.TensorLayout,
          operands: Sequence[tf.Tensor], epsilon: float = 0.0) -> tf.Tensor:
  """The family's elementwise formula on ``x`` by the fused kernels.

  Args:
    family: a key of :data:`FAMILIES`.
    x: the layer's input (float32, float16 or bfloat16; channels first or
      last).
    layout: its layout.
    operands: float32 tensors in the order of ``FAMILIES[family]``, each
      broadcastable to ``layout.stat_shape`` (per sample and channel, per
      channel, or scalars).
    epsilon: for ``BSqrt``, the epsilon of the signed square root.

  Returns:
    ``y`` in ``x``'s dtype. Only ``x`` and the ``[K, N, C]`` operands are kept
    for the backward pass.
  """
  if len(operands) != len(FAMILIES[family]):
    raise ValueError(f"{family} takes operands {FAMILIES[family]}, got "
                     f"{len(operands)}.")
  params = tf.stack([_per_sample_channel(t, x, layout) for t in operands])
  attrs = dict(channels_last=layout.channel_axis == layout.rank - 1,
               epsilon=float(epsilon))
  forward, backward = _op(family, "Forward"), _op(family, "Backward")

  def backward_pass(dy, x, params):

    @tf.custom_gradient
    def run(dy, x, params):
      dx, dparams = backward(dy, x, params, **attrs)

      def second_order(ddx, ddparams):
        ddx = tf.zeros_like(dx) if ddx is None else ddx
        ddparams = tf.zeros_like(dparams) if ddparams is None else ddparams
        with tf.GradientTape() as outer:
          outer.watch([dy, x, params])
          with tf.GradientTape() as inner:
            inner.watch([x, params])
            y = _composite(family, x, params, layout, epsilon)
          first = inner.gradient(y, [x, params], output_gradients=dy)
        return outer.gradient(
            first, [dy, x, params], output_gradients=[ddx, ddparams],
            unconnected_gradients=tf.UnconnectedGradients.ZERO)

      return (dx, dparams), second_order

    return run(dy, x, params)

  @tf.custom_gradient
  def run(x, params):
    y = forward(x, params, **attrs)
    return y, lambda dy: backward_pass(dy, x, params)

  return run(x, params)
