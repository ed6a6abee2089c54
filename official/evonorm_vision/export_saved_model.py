r"""Exports a trained model as a SavedModel (Model Garden's export).

Any experiment of the project, classification or Mask R-CNN
(:mod:`evonorm_model_garden.export`):

  python -m evonorm_vision.export_saved_model \
    --experiment=evonorm_resnet_digits --checkpoint_path=MODEL_DIR \
    --export_dir=EXPORT_DIR --input_type=image_tensor --input_image_size=32,32

With ``--tflite=PATH`` the SavedModel is also converted to TFLite: float32
by default, ``--tflite_quantize=dynamic_range`` (int8 weights) or
``--tflite_quantize=int8`` (int8 weights and activations, calibrated on
``--representative_data``: a .npy file of uint8 images or a glob of image
files).
"""

from absl import flags

from evonorm_model_garden import checkpoints
from evonorm_model_garden import cli
from evonorm_model_garden import experiments
from evonorm_model_garden import export


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
  flags.DEFINE_string("tflite", None, "Also write a TFLite model here "
                      "(image_tensor input).")
  flags.DEFINE_enum("tflite_quantize", "none",
                    list(export.TFLITE_QUANTIZATIONS),
                    "TFLite weights and activations: float32 (none), int8 "
                    "weights (dynamic_range), or both int8 (int8).")
  flags.DEFINE_string("representative_data", None, "Images that calibrate "
                      "int8 activations: a .npy file [N, H, W(, C)] of uint8 "
                      "or a glob of image files.")
  flags.DEFINE_integer("representative_count", 100, "Images used from "
                       "--representative_data.", lower_bound=1)
  experiments.define_searched_layers_flag()
  flags.mark_flags_as_required(["experiment", "checkpoint_path",
                                "export_dir"])


def main(_):
  f = flags.FLAGS
  with cli.user_errors():  # bad input: one line, before any work
    cli.check_export_dir("--export_dir", f.export_dir)
    cli.check_output_file("--tflite", f.tflite)
    params = experiments.parse(f)
    checkpoints.check_checkpoint(f.checkpoint_path, params)
    export.check_tflite_request(f.input_type, f.tflite, f.tflite_quantize,
                                f.representative_data)
  export_dir = export.export(params, f.checkpoint_path, f.export_dir,
                             f.input_type, f.input_image_size, f.batch_size)
  print(export_dir)
  if f.tflite:
    size = [int(s) for s in (f.input_image_size or
                             params.task.model.input_size[:2])]
    images = None
    if f.representative_data:
      images = export.representative_images(
          f.representative_data, size, f.representative_count)
    print(export.write_tflite(export_dir, f.tflite, f.tflite_quantize,
                              images, image_size=size))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
