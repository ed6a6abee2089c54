"""Model Garden's RPN, detection and mask heads with registry norm sites.

Every norm of the three heads is followed by the head's activation, so every
site folds it in (``nonlinearity=True``) and the activation becomes the
identity:

=====================  =====================================================
``RPNHead``             one norm per level and convolution
                        (``rpn-conv-norm_{level}_{i}``; the convolutions are
                        shared across levels, the norms are not), on
                        ``[batch, H_l, W_l, C]``
``DetectionHead``       after every 3x3 convolution, on per-RoI maps
                        ``[batch * rois, 7, 7, C]``; after every fully
                        connected layer, on ``[batch * rois, fc_dims]``
``MaskHead``            after every 3x3 convolution and after the
                        deconvolution, on per-RoI maps
=====================  =====================================================

**Instance statistics of the fully connected norms.** Model Garden applies
them to ``[batch, rois, fc_dims]``, which for this library would make the RoIs
of one image the instance axis: statistics pooled over 512 sampled RoIs in
training and 1000 proposals in inference, so one RoI's output would depend on
the others (padding included). Here each RoI is its own instance: the fc
norms see ``[batch * rois, fc_dims]``. Per layer: batch statistics (BN,
EvoNorm-B's batch variance) are taken over all RoIs of the batch, as Model
Garden's BatchNorm does; instance statistics (EvoNorm-B's ``s2_wh``) have no
axis left and are 0, as for any dense input (:mod:`evonorm_layers.layout`);
group and layer statistics (EvoNorm-S, GN, LN) are over the channels of each
RoI. In inference (moving statistics) no RoI's output depends on another's.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras
from official.vision.modeling.heads import dense_prediction_heads
from official.vision.modeling.heads import instance_heads

from evonorm_model_garden.norm_sites import NormSite
from evonorm_model_garden.norm_sites import RegistryNormSites

_serializable = tf_keras.utils.register_keras_serializable(package="EvoNorm")
_ACTIVATION = ("config:activation", "_activation")


@_serializable
class RPNHead(RegistryNormSites, dense_prediction_heads.RPNHead):
  """Model Garden's RPN head; ``norm_activation`` picks every norm."""

  NORM_SITES = (NormSite("_norms", *_ACTIVATION),)


@_serializable
class DetectionHead(RegistryNormSites, instance_heads.DetectionHead):
  """Model Garden's box and class head; each RoI is its own instance."""

  NORM_SITES = (NormSite("_conv_norms", *_ACTIVATION),
                NormSite("_fc_norms", *_ACTIVATION))

  def call(self, inputs, training=None):
    """``[batch, rois, h, w, C]`` RoI features -> (class, box) outputs."""
    _, num_rois, height, width, filters = inputs.get_shape().as_list()
    x = tf.reshape(inputs, [-1, height, width, filters])
    # self._activation is the identity once folded into the norms.
    for conv, norm in zip(self._convs, self._conv_norms):
      x = self._activation(norm(conv(x), training=training))
    x = tf.reshape(x, [-1, num_rois, height * width * x.shape[-1]])
    for fc, norm in zip(self._fcs, self._fc_norms):
      x = fc(x)
      # [batch * rois, fc_dims]: one instance per RoI.
      x = tf.reshape(norm(tf.reshape(x, [-1, x.shape[-1]]),
                          training=training), [-1, num_rois, x.shape[-1]])
      x = self._activation(x)
    return self._classifier(x), self._box_regressor(x)


@_serializable
class MaskHead(RegistryNormSites, instance_heads.MaskHead):
  """Model Garden's mask head; ``norm_activation`` picks every norm (and,
  unlike Model Garden's, its ``synchronized`` reaches them)."""

  NORM_SITES = (NormSite("_conv_norms", *_ACTIVATION),
                NormSite("_deconv_bn", *_ACTIVATION))
