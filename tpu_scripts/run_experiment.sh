#!/usr/bin/env bash
# Trains or evaluates an experiment on an existing Cloud TPU VM.
set -euo pipefail

usage() {
  print_text <<'EOF'
Usage: run_experiment.sh --name=NAME --zone=ZONE --experiment=EXP --mode=MODE
                         --model_dir=gs://... [flags]

Runs `python3 -m evonorm_vision.train --experiment=EXP --mode=MODE
--model_dir=gs://... --tpu=local --params_override=...` in the project folder
on an existing TPU VM (see create_tpu_vm.sh), over a foreground
`gcloud compute tpus tpu-vm ssh` session; the script's exit status is the
training's. On a TPU VM the TPU address is `local`; TF 2.20 trains with
tf.distribute.TPUStrategy (there is no TPUEstimator).

EOF
  usage_vm_flags
  echo
  usage_run_flags
  echo "  --remote_dir=DIR         the project folder on the VM (default: evonorm)"
  echo "  --python=PYTHON          interpreter on the VM (default: python3)"
  echo
  usage_common_flags
}

_here="${BASH_SOURCE[0]%/*}"
[[ "${_here}" != "${BASH_SOURCE[0]}" ]] || _here=.
# shellcheck source=SCRIPTDIR/common.sh
source "${_here}/common.sh"

ACCEPTED_FLAGS=(name zone project experiment mode model_dir data_dir params_override
  config_file remote_dir python dry_run)
parse_flags "$@"

validate_vm_flags
validate_run_flags
require_gcloud

tpu_run_experiment
