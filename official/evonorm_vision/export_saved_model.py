r"""Exports a trained model as a SavedModel (Model Garden's export).

Classifiers serve ``{logits, probs}``, Mask R-CNN detections (boxes, scores,
classes, masks, num_detections), from ``image_tensor`` (uint8 [batch, H, W,
3]), ``image_bytes`` (encoded images) or ``tf_example`` (serialized examples)
inputs, with Model Garden's preprocessing.

  python -m evonorm_vision.export_saved_model \
    --experiment=evonorm_resnet_digits --checkpoint_path=MODEL_DIR \
    --export_dir=EXPORT_DIR --input_type=image_tensor --input_image_size=32,32
"""

from absl import app
from absl import flags
import tensorflow as tf
from official.core import exp_factory
from official.core import task_factory
from official.modeling import hyperparams
from official.vision.serving import export_saved_model_lib

from evonorm_layers import cli
from evonorm_vision import experiment

def load_params(name, config_files=(), params_override="",
                searched_layers=()):
  """The experiment config after YAML files and overrides."""
  experiment.check_experiment_name(name)
  experiment.register_searched_layers(searched_layers)
  params = exp_factory.get_exp_config(name)
  for path in config_files or ():
    params = hyperparams.override_params_dict(params, path, is_strict=True)
  if params_override:
    params = hyperparams.override_params_dict(params, params_override,
                                              is_strict=True)
  params.validate()
  params.lock()
  experiment.check_layer_name(params)
  return params


def export(params, checkpoint_path, export_dir, input_type="image_tensor",
           input_image_size=None, batch_size=None):
  """Writes the SavedModel (and params.yaml) to ``export_dir``; returns it.

  The serving module is the task class's ``export_module`` where it has one
  (Mask R-CNN with registry norms), else Model Garden's for the task.
  """
  size = [int(s) for s in (input_image_size or
                           params.task.model.input_size[:2])]
  module_cls = getattr(task_factory.get_task_cls(type(params.task)),
                       "export_module", None)
  module = None
  if module_cls is not None:
    module = module_cls(params=params, batch_size=batch_size,
                        input_image_size=size, input_type=input_type)
  export_saved_model_lib.export_inference_graph(
      input_type=input_type, batch_size=batch_size, input_image_size=size,
      params=params, checkpoint_path=checkpoint_path, export_dir=export_dir,
      export_module=module)
  return export_dir


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  flags.DEFINE_string("experiment", None, "Experiment name.")
  flags.DEFINE_multi_string("config_file", None, "YAML config files, in order.")
  flags.DEFINE_string("params_override", "", "Overrides, as in training.")
  flags.DEFINE_string("checkpoint_path", None,
                      "Checkpoint file, or model_dir (latest checkpoint).")
  flags.DEFINE_string("export_dir", None, "Output directory.")
  flags.DEFINE_enum("input_type", "image_tensor",
                    ["image_tensor", "image_bytes", "tf_example"],
                    "Serving input.")
  flags.DEFINE_list("input_image_size", None,
                    "Height,width (default: the model's input size).")
  flags.DEFINE_integer("batch_size", None, "Fixed batch size (default: any).")
  experiment.define_searched_layers_flag()
  flags.mark_flags_as_required(["experiment", "checkpoint_path",
                                "export_dir"])


def main(_):
  f = flags.FLAGS
  with cli.user_errors():  # bad input: one line, before any work
    params = load_params(f.experiment, f.config_file, f.params_override,
                         f.searched_layers)
    if not (tf.io.gfile.exists(f.checkpoint_path) or
            tf.io.gfile.exists(f.checkpoint_path + ".index")):
      raise FileNotFoundError(
          f"--checkpoint_path={f.checkpoint_path!r} does not exist: pass a "
          "checkpoint file prefix or the training run's --model_dir.")
  print(export(params, f.checkpoint_path, f.export_dir, f.input_type,
               f.input_image_size, f.batch_size))


if __name__ == "__main__":
  define_flags()
  app.run(main)
