"""Model Garden's detection serving module for the registry-norm Mask R-CNN.

Inputs ``image_tensor`` (uint8 ``[batch, H, W, 3]``), ``image_bytes`` or
``tf_example``; outputs Model Garden's ``detection_boxes`` (in the resized
image's pixels; ``image_info`` holds the scale), ``detection_scores``,
``detection_classes``, ``num_detections``, ``detection_masks`` (per-box
``[28, 28]`` probabilities) and ``image_info``.
"""

from __future__ import annotations

import tf_keras
from official.vision.serving import detection as mg_detection

from evonorm_detection import maskrcnn

# Non-max suppressions that accept a batch size known only at run time.
_DYNAMIC_BATCH_NMS = ("batched", "v2", "v3")


class DetectionModule(mg_detection.DetectionModule):
  """Model Garden's ``DetectionModule`` building this project's model."""

  def _build_model(self):
    generator = self.params.task.model.detection_generator
    if self._batch_size is None and generator.nms_version not in (
        _DYNAMIC_BATCH_NMS):
      generator.nms_version = "batched"  # as Model Garden's module does
    input_specs = tf_keras.layers.InputSpec(
        shape=[self._batch_size, *self._padded_size, 3])
    return maskrcnn.build_maskrcnn(input_specs, self.params.task.model)
