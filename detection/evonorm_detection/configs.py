"""Mask R-CNN experiments with a selectable norm-activation layer (Table 5).

Registered with Model Garden's experiment factory (``--experiment=NAME``):

========================================  ====================================
``evonorm_maskrcnn_r50fpn_coco``           ResNet-50-FPN at 1024x1024, Model
                                           Garden's ``maskrcnn_resnetfpn_coco``
                                           recipe
``evonorm_maskrcnn_spinenet96_coco``       SpineNet-96 at 1024x1024, Model
                                           Garden's ``maskrcnn_spinenet_coco``
                                           recipe (350 epochs from scratch)
``evonorm_maskrcnn_shapes_quickstart``     a small ResNet-18-FPN on the
                                           generated shapes dataset (CPU,
                                           minutes; a smoke test, not a result)
========================================  ====================================

``task.model.norm_activation.type`` picks the layer of every norm site
(backbone, FPN, RPN, detection and mask heads); the experiments default to
EvoNorm-B0, and Table 5's rows are ``bn_relu``, ``bn_silu``, ``gn_relu``,
``evonorm_b0`` and ``evonorm_s0`` (YAML files in
``official/configs/experiments/maskrcnn_*.yaml``).

Model Garden's ResNet-FPN recipe starts from an ImageNet checkpoint of a
BN-ReLU ResNet, which cannot initialize other layers: these experiments have
no ``init_checkpoint`` and train from scratch (set one trained with the same
layer to fine-tune). COCO is read from Model Garden's TFRecords
(``create_coco_tf_record.py``) with ``instances_val2017.json`` for the COCO
evaluator; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import os

from official.core import config_definitions as cfg
from official.core import exp_factory
from official.vision.configs import backbones as mg_backbones
from official.vision.configs import decoders as mg_decoders
from official.vision.configs import maskrcnn as mg_maskrcnn

from evonorm_model_garden import norm_activation as norm_lib
from evonorm_model_garden.backbones import configs as backbone_configs

SHAPES_DIR = os.path.join(os.path.expanduser("~"), "evonorm_data", "shapes")


@dataclasses.dataclass
class Backbone(backbone_configs.Backbone):
  """The classification side's backbones plus ``evonorm_spinenet``."""
  evonorm_spinenet: mg_backbones.SpineNet = dataclasses.field(
      default_factory=mg_backbones.SpineNet)


@dataclasses.dataclass
class Decoder(mg_decoders.Decoder):
  """Model Garden's decoders plus ``evonorm_fpn`` (FPN with registry norms)."""
  evonorm_fpn: mg_decoders.FPN = dataclasses.field(
      default_factory=mg_decoders.FPN)


@dataclasses.dataclass
class MaskRCNN(mg_maskrcnn.MaskRCNN):
  backbone: Backbone = dataclasses.field(
      default_factory=lambda: Backbone(
          type="evonorm_resnet",
          evonorm_resnet=mg_backbones.ResNet(model_id=50)))
  decoder: Decoder = dataclasses.field(
      default_factory=lambda: Decoder(type="evonorm_fpn",
                                      evonorm_fpn=mg_decoders.FPN()))
  # Model Garden's Mask R-CNN norm settings.
  norm_activation: norm_lib.NormActivationConfig = dataclasses.field(
      default_factory=lambda: norm_lib.NormActivationConfig(
          type="evonorm_b0", norm_momentum=0.997, norm_epsilon=1e-4,
          use_sync_bn=True))


@dataclasses.dataclass
class MaskRCNNTask(mg_maskrcnn.MaskRCNNTask):
  model: MaskRCNN = dataclasses.field(default_factory=MaskRCNN)


def _from_model_garden(name: str, backbone: Backbone, decoder: Decoder,
                       restrictions=(), **model_fields
                       ) -> cfg.ExperimentConfig:
  """Model Garden's experiment ``name`` with this project's model config."""
  reference = exp_factory.get_exp_config(name)
  task = MaskRCNNTask()
  fields = reference.task.as_dict()
  model = fields.pop("model")
  norm = model.pop("norm_activation")
  for key in ("backbone", "decoder"):
    model.pop(key)
  task.override(fields, is_strict=True)
  task.model.override(model, is_strict=True)
  task.model.norm_activation.override(norm, is_strict=True)
  task.model.backbone = backbone
  task.model.decoder = decoder
  task.model.override(model_fields, is_strict=True)
  task.init_checkpoint = None  # a BN-ReLU ImageNet ResNet; see above
  task.init_checkpoint_modules = "all"
  return cfg.ExperimentConfig(
      runtime=reference.runtime, task=task, trainer=reference.trainer,
      restrictions=["task.train_data.is_training != None",
                    "task.validation_data.is_training != None",
                    *restrictions])


@exp_factory.register_config_factory("evonorm_maskrcnn_r50fpn_coco")
def maskrcnn_r50fpn_coco() -> cfg.ExperimentConfig:
  """ResNet-50-FPN Mask R-CNN on COCO at 1024x1024 (Table 5, R-50-FPN)."""
  config = _from_model_garden(
      "maskrcnn_resnetfpn_coco",
      Backbone(type="evonorm_resnet",
               evonorm_resnet=mg_backbones.ResNet(model_id=50)),
      Decoder(type="evonorm_fpn", evonorm_fpn=mg_decoders.FPN()))
  config.task.model.norm_activation.type = "evonorm_b0"
  return config


@exp_factory.register_config_factory("evonorm_maskrcnn_spinenet96_coco")
def maskrcnn_spinenet96_coco() -> cfg.ExperimentConfig:
  """SpineNet-96 Mask R-CNN on COCO at 1024x1024 (Table 5, SpineNet-96)."""
  config = _from_model_garden(
      "maskrcnn_spinenet_coco",
      Backbone(type="evonorm_spinenet", evonorm_spinenet=mg_backbones.SpineNet(
          model_id="96", min_level=3, max_level=7)),
      Decoder(type="identity", identity=mg_decoders.Identity()),
      restrictions=[
          "task.model.min_level == "
          "task.model.backbone.evonorm_spinenet.min_level",
          "task.model.max_level == "
          "task.model.backbone.evonorm_spinenet.max_level"],
      input_size=[1024, 1024, 3])
  config.task.model.norm_activation.type = "evonorm_b0"
  return config


@exp_factory.register_config_factory("evonorm_maskrcnn_shapes_quickstart")
def maskrcnn_shapes_quickstart() -> cfg.ExperimentConfig:
  """A narrow ResNet-18-FPN Mask R-CNN on the generated shapes at 128x128.

  Write the data first with ``python -m evonorm_detection.data.shapes`` (the
  detection quickstart does it for you). Every norm site of the full models
  is present; only the sizes are small.
  """
  config = maskrcnn_r50fpn_coco()
  task = config.task
  task.model.backbone.evonorm_resnet.model_id = 18
  task.model.backbone.evonorm_resnet.depth_multiplier = 0.25
  task.model.override({
      "num_classes": 4, "input_size": [128, 128, 3], "min_level": 2,
      "max_level": 6,
      "anchor": {"anchor_size": 2.0, "aspect_ratios": [0.5, 1.0, 2.0]},
      "decoder": {"evonorm_fpn": {"num_filters": 32}},
      "rpn_head": {"num_convs": 1, "num_filters": 32},
      "detection_head": {"num_convs": 1, "num_filters": 32, "num_fcs": 1,
                         "fc_dims": 64},
      "mask_head": {"num_convs": 1, "num_filters": 32},
      "roi_generator": {"pre_nms_top_k": 512, "num_proposals": 128,
                        "test_pre_nms_top_k": 512, "test_num_proposals": 64},
      "roi_sampler": {"num_sampled_rois": 64},
      "mask_sampler": {"num_sampled_masks": 16},
      "mask_roi_aligner": {"crop_size": 7},
      "detection_generator": {"pre_nms_top_k": 200,
                              "max_num_detections": 20},
  })
  task.model.norm_activation.override({
      "use_sync_bn": False, "norm_momentum": 0.9, "norm_epsilon": 1e-5,
      "groups": 8})
  task.losses.l2_weight_decay = 1e-4
  task.annotation_file = os.path.join(SHAPES_DIR, "instances_val.json")
  batch = 8
  for data, split in ((task.train_data, "train"),
                      (task.validation_data, "val")):
    data.override({"input_path": os.path.join(SHAPES_DIR, f"{split}-*"),
                   "global_batch_size": batch, "dtype": "float32",
                   "shuffle_buffer_size": 256,
                   "parser": {"max_num_instances": 8, "mask_crop_size": 28,
                              "rpn_batch_size_per_im": 64,
                              "aug_scale_min": 1.0, "aug_scale_max": 1.0}})
  task.validation_data.drop_remainder = False
  steps_per_epoch = 32  # 256 training images
  config.runtime.override({"mixed_precision_dtype": None,
                           "enable_xla": False,
                           "distribution_strategy": "one_device"})
  config.trainer.override({
      "train_steps": 10 * steps_per_epoch, "steps_per_loop": steps_per_epoch,
      "summary_interval": steps_per_epoch,
      "checkpoint_interval": steps_per_epoch,
      "validation_interval": 5 * steps_per_epoch, "validation_steps": 8,
      "optimizer_config": {
          "learning_rate": {"stepwise": {
              "boundaries": [8 * steps_per_epoch],
              "values": [0.04, 0.004]}},
          "warmup": {"linear": {"warmup_steps": steps_per_epoch,
                                "warmup_learning_rate": 0.004}}}})
  return config
