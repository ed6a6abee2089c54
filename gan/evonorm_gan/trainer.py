"""BigGAN-deep training under any ``tf.distribute`` strategy.

Hinge loss; Adam with separate generator and discriminator learning rates;
``d_steps`` discriminator steps per generator step; an exponential moving
average of every generator variable (copied until ``ema_start``, as in
BigGAN); gradients averaged over the global batch across replicas; the
generator's batch statistics across replicas with
``norm_activation.use_sync_bn``. Checkpoints (both networks, the EMA
generator, both optimizers, the step) every ``checkpoint_interval`` steps; a
killed run resumes from the last one. TensorBoard: losses and discriminator
outputs, and image grids of the EMA generator (one row per class).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import tensorflow as tf
import tf_keras
from tqdm import tqdm

from evonorm_gan import data as data_lib
from evonorm_gan import evaluation
from evonorm_gan import models
from evonorm_model_garden import checkpoints
from evonorm_model_garden import norm_activation as norm_lib


def make_generator(config) -> models.Generator:
  g = config.generator
  norm = norm_lib.factory_from_config(config.norm_activation, axis=-1)
  return models.Generator(
      resolution=g.resolution, ch=g.ch, num_classes=config.data.num_classes,
      norm_activation=norm, z_dim=g.z_dim, shared_dim=g.shared_dim,
      attention_resolutions=tuple(g.attention_resolutions))


def make_discriminator(config) -> models.Discriminator:
  d = config.discriminator
  return models.Discriminator(
      resolution=config.generator.resolution, ch=d.ch,
      num_classes=config.data.num_classes,
      attention_resolutions=tuple(d.attention_resolutions))


def d_hinge_loss(real_logits, fake_logits):
  """Per-example ``relu(1 - D(x)) + relu(1 + D(G(z)))``."""
  return tf.nn.relu(1.0 - real_logits) + tf.nn.relu(1.0 + fake_logits)


def g_hinge_loss(fake_logits):
  return -fake_logits


class GANTrainer:
  """Builds the networks and optimizers in ``strategy`` and trains them."""

  def __init__(self, config, strategy: tf.distribute.Strategy,
               model_dir: str):
    self.config, self.strategy, self.model_dir = config, strategy, model_dir
    opt = config.optimization
    if config.trainer.seed is not None:
      tf_keras.utils.set_random_seed(config.trainer.seed)
    with strategy.scope():
      self.generator = models.build(make_generator(config))
      self.ema_generator = models.build(make_generator(config))
      self.discriminator = models.build(make_discriminator(config))
      adam = lambda lr: tf_keras.optimizers.Adam(
          lr, beta_1=opt.beta1, beta_2=opt.beta2, epsilon=opt.epsilon)
      self.g_optimizer = adam(opt.g_learning_rate)
      self.d_optimizer = adam(opt.d_learning_rate)
      # Slots now, not in the first traced step (which would then be traced
      # twice, once to create them).
      self.g_optimizer.build(self.generator.trainable_variables)
      self.d_optimizer.build(self.discriminator.trainable_variables)
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False,
                              name="generator_step")
    self.checkpoint = tf.train.Checkpoint(
        generator=self.generator, ema_generator=self.ema_generator,
        discriminator=self.discriminator, g_optimizer=self.g_optimizer,
        d_optimizer=self.d_optimizer, step=self.step)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, model_dir, max_to_keep=config.trainer.max_to_keep,
        step_counter=self.step,
        checkpoint_interval=config.trainer.checkpoint_interval)
    self.replicas = strategy.num_replicas_in_sync
    self.global_batch = config.data.global_batch_size
    self._loop = None

  def check_checkpoint(self, mode: str = "train"):
    """Raises unless the latest checkpoint in ``model_dir`` (if any) fits
    these networks (one of another layer or width would restore in part and
    train on from random weights for the rest), or when ``mode`` only
    evaluates and there is none (it would score random weights)."""
    latest = self.manager.latest_checkpoint
    if latest:
      checkpoints.check_fits(
          {"generator": self.generator, "ema_generator": self.ema_generator,
           "discriminator": self.discriminator}, latest,
          f"--model_dir={self.model_dir!r}",
          f"norm_activation.type={self.config.norm_activation.type}")
    elif "train" not in mode:
      raise FileNotFoundError(
          f"--mode={mode} evaluates the latest checkpoint of --model_dir="
          f"{self.model_dir!r}, which holds none: train first, or pass the "
          "training run's --model_dir.")

  def restore(self) -> int:
    """Restores the latest checkpoint (or copies G into the EMA G)."""
    if self.manager.latest_checkpoint:
      self.checkpoint.restore(self.manager.latest_checkpoint)
    else:
      self._copy_to_ema()
    return int(self.step.numpy())

  def _copy_to_ema(self):
    for ema, var in zip(self.ema_generator.variables,
                        self.generator.variables):
      ema.assign(var)

  # -- one training loop ----------------------------------------------------------

  def _noise(self, batch):
    z_dim = self.config.generator.z_dim
    return (tf.random.normal([batch, z_dim]),
            tf.random.uniform([batch], 0, self.config.data.num_classes,
                              tf.int32))

  def _d_step(self, images, labels):
    batch = tf.shape(images)[0]
    z, fake_labels = self._noise(batch)
    fakes = self.generator([z, fake_labels], training=True)
    with tf.GradientTape() as tape:
      # One pass over reals and fakes together, as BigGAN does: the
      # discriminator has no batch statistics, so this is the same function
      # with one power iteration per step and half the launches.
      logits = self.discriminator(
          [tf.concat([images, tf.cast(fakes, images.dtype)], axis=0),
           tf.concat([labels, fake_labels], axis=0)], training=True)
      real, fake = logits[:batch], logits[batch:]
      loss = tf.nn.compute_average_loss(d_hinge_loss(real, fake),
                                        global_batch_size=self.global_batch)
    variables = self.discriminator.trainable_variables
    self.d_optimizer.apply_gradients(zip(tape.gradient(loss, variables),
                                         variables))
    return {"d_loss": loss * self.replicas,
            "d_real": tf.reduce_mean(real), "d_fake": tf.reduce_mean(fake)}

  def _g_step(self, batch):
    z, labels = self._noise(batch)
    with tf.GradientTape() as tape:
      fakes = self.generator([z, labels], training=True)
      logits = self.discriminator([fakes, labels], training=True)
      loss = tf.nn.compute_average_loss(g_hinge_loss(logits),
                                        global_batch_size=self.global_batch)
    variables = self.generator.trainable_variables
    self.g_optimizer.apply_gradients(zip(tape.gradient(loss, variables),
                                         variables))
    return {"g_loss": loss * self.replicas}

  def _ema_update(self):
    opt = self.config.optimization
    decay = tf.where(self.step >= opt.ema_start, opt.ema_decay, 0.0)
    for ema, var in zip(self.ema_generator.variables,
                        self.generator.variables):
      if ema.dtype.is_floating:
        ema.assign(decay * ema + (1.0 - decay) * tf.cast(var, ema.dtype))

  def _make_loop(self, iterator, run_eagerly: bool = False):
    per_replica = self.global_batch // self.replicas
    d_steps = self.config.optimization.d_steps

    def loop(num_steps):
      logs = {k: tf.constant(0.0)
              for k in ("d_loss", "d_real", "d_fake", "g_loss")}
      for _ in tf.range(num_steps):
        for _ in range(d_steps):
          images, labels = next(iterator)
          d_logs = self.strategy.run(self._d_step, args=(images, labels))
        g_logs = self.strategy.run(self._g_step, args=(per_replica,))
        self.step.assign_add(1)
        self._ema_update()
        logs = {k: self.strategy.reduce("MEAN", v, axis=None)
                for k, v in {**d_logs, **g_logs}.items()}
      return logs

    return loop if run_eagerly else tf.function(loop)

  def train(self, progress: bool = True) -> dict:
    """Trains to ``trainer.train_steps`` generator steps; returns the last
    logs. Resumes from the latest checkpoint in ``model_dir``. The loop is
    compiled unless ``trainer.train_tf_function`` is false."""
    cfg = self.config.trainer
    start = self.restore()
    dataset = self.strategy.distribute_datasets_from_function(
        lambda ctx: data_lib.dataset(
            self.config.data, self.config.generator.resolution,
            ctx.get_per_replica_batch_size(self.global_batch), ctx,
            seed=self.config.trainer.seed))
    iterator = iter(dataset)
    loop = self._make_loop(iterator, not cfg.train_tf_function)
    writer = tf.summary.create_file_writer(os.path.join(self.model_dir,
                                                        "train"))
    bar = tqdm(total=cfg.train_steps, initial=start, unit="step",
               desc="BigGAN-deep", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    logs = {}
    step = start
    try:
      while step < cfg.train_steps:
        n = min(cfg.steps_per_loop, cfg.train_steps - step,
                cfg.summary_interval - step % cfg.summary_interval)
        logs = {k: float(v) for k, v in loop(tf.constant(n)).items()}
        if not all(np.isfinite(v) for v in logs.values()):
          raise FloatingPointError(f"Non-finite GAN losses at step "
                                   f"{step + n}: {logs}")
        step = int(self.step.numpy())
        bar.update(step - bar.n)
        bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()})
        with writer.as_default(step=step):
          for key, value in logs.items():
            tf.summary.scalar(key, value)
          if step % cfg.image_summary_interval == 0 or (
              step == cfg.train_steps):
            tf.summary.image("ema_samples", self.sample_grid()[None])
        self.manager.save(checkpoint_number=step,
                          check_interval=step != cfg.train_steps)
    finally:
      bar.close()
      writer.flush()
    return logs

  def sample_grid(self, per_class: int = 8, truncation=None) -> np.ndarray:
    """A uint8 grid of EMA samples: one row per class (at most
    ``evaluation.grid_classes`` rows), fixed noise."""
    rows = min(self.config.data.num_classes,
               self.config.evaluation.grid_classes)
    labels = np.repeat(np.arange(rows), per_class)
    images, _ = evaluation.sample(self.ema_generator, len(labels),
                                  len(labels), rows, truncation, labels)
    return evaluation.image_grid(images, rows)
