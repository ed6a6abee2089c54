"""Test set-up: 4 logical CPU devices, so tf.distribute strategies with
several replicas run on this machine (they stand in for TPU/GPU replicas)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

NUM_LOGICAL_CPUS = 4

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _own_collective_keys():
  """Gives every test its own range of collective group keys.

  Each MirroredStrategy numbers its collective groups from 1, and the runtime
  caches a collective's parameters by (group, instance) key for the life of
  the process. Two strategies built by different tests in one worker then
  reuse keys for reductions of different shapes, and the runtime aborts
  ("Shape mismatch in the collective instance ..."). A real job builds one
  strategy per process; here each test moves the key base along.
  """
  tf.distribute.MirroredStrategy._collective_key_base += 10_000  # pylint: disable=protected-access
  yield


def pytest_collection_modifyitems(config, items):
  """Heavy tests first: started last, one of them would keep a worker busy
  while the other has nothing left to run. Under ``--dist=loadgroup``, the
  ``xdist_group`` tests get their group in their node id, which is what
  xdist's scheduler groups by."""
  items.sort(key=lambda item: item.get_closest_marker("heavy") is None)
  if getattr(config.option, "loadgroup", False):  # set in xdist's workers
    for item in items:
      _add_group_to_node_id(item)


def _add_group_to_node_id(item):
  """``nodeid@group``, as xdist 3.8 means to write it: it assigns
  ``item._nodeid``, which pytest 9 no longer reads (the id lives in
  ``item._id``), so without this every grouped test was scheduled alone
  and a shared fixture was built on both workers."""
  groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name",
                                                             "default"))
                   for m in item.iter_markers("xdist_group")})
  nodeid = item.nodeid
  if not groups or nodeid.rfind("@") > nodeid.rfind("]"):
    return  # no group, or xdist's own suffix took effect
  from _pytest.nodeid import NodeId  # pylint: disable=g-import-not-at-top
  item._id = NodeId.parse(f"{nodeid}@{'_'.join(groups)}")  # pylint: disable=protected-access
