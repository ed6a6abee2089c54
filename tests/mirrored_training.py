"""Trains the quickstart under MirroredStrategy over 2 logical CPUs.

Run in its own process by tests/test_model_garden.py: TensorFlow keeps
collective group and instance keys for the life of a process, so each
strategy configuration needs a fresh one.

  python -m tests.mirrored_training OVERRIDES MODEL_DIR OUTPUT.npz
"""

import sys

import numpy as np
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2)

# pylint: disable=g-import-not-at-top,wrong-import-position
from official.core import task_factory
from official.core import train_lib

import evonorm_layers
from evonorm_model_garden import experiments


def main(overrides, model_dir, output):
  params = experiments.load_params("evonorm_resnet_digits", (),
                                          overrides)
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with strategy.scope():
    task = task_factory.get_task(params.task)
  model, _ = train_lib.run_experiment(
      distribution_strategy=strategy, task=task, mode="train", params=params,
      model_dir=model_dir)
  layers = [l for l in model._flatten_layers()  # pylint: disable=protected-access
            if isinstance(l, evonorm_layers.BatchDependentNormActivation)]
  np.savez(output,
           synchronized=np.array([l.synchronized for l in layers]),
           replicas=np.array(strategy.num_replicas_in_sync),
           **{f"variance_{i}": np.stack([v.numpy() for v in
                                         l.moving["variance"].values])
              for i, l in enumerate(layers)})


if __name__ == "__main__":
  main(*sys.argv[1:4])
