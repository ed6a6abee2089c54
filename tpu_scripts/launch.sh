#!/usr/bin/env bash
# End to end: create a TPU VM, install the project, run an experiment, delete
# the VM (also when installing or training fails, unless --keep_vm).
set -euo pipefail

usage() {
  print_text <<'EOF'
Usage: launch.sh --name=NAME --zone=ZONE (--repo=URL | --local_checkout=DIR)
                 --experiment=EXP --mode=MODE --model_dir=gs://... [flags]

Creates a TPU VM, installs the project on it, runs the experiment in the
foreground, then deletes the VM. Once the VM exists it is deleted however the
script ends (success, a failed install or training, Ctrl-C), unless --keep_vm.
The exit status is that of the first failing step (0 if all succeed).
Equivalent to create_tpu_vm.sh, run_experiment.sh, delete_tpu_vm.sh in turn.

EOF
  usage_vm_flags
  echo
  usage_create_flags
  echo
  usage_install_flags
  echo
  usage_run_flags
  echo
  echo "Tear-down:"
  echo "  --keep_vm                do not delete the VM at the end"
  echo
  usage_common_flags
}

_here="${BASH_SOURCE[0]%/*}"
[[ "${_here}" != "${BASH_SOURCE[0]}" ]] || _here=.
# shellcheck source=SCRIPTDIR/common.sh
source "${_here}/common.sh"

ACCEPTED_FLAGS=(name zone project accelerator_type runtime_version preemptible spot
  repo ref local_checkout remote_dir python
  experiment mode model_dir data_dir params_override config_file
  keep_vm dry_run)
parse_flags "$@"

# Validate everything before creating anything.
validate_vm_flags
validate_create_flags
validate_install_flags
validate_run_flags
require_gcloud

VM_CREATED=0

tear_down() {
  local status=$?
  trap - EXIT INT TERM
  if ((VM_CREATED)); then
    if ((KEEP_VM)); then
      log "Keeping TPU VM ${NAME} (--keep_vm); delete it with:"
      log "  $(quote_cmd "${TPU_SCRIPTS_DIR}/delete_tpu_vm.sh" "--name=${NAME}" "--zone=${ZONE}" ${PROJECT:+"--project=${PROJECT}"})"
    else
      if ((status != 0)); then
        log "Step failed (exit status ${status}); deleting TPU VM ${NAME}."
      fi
      tpu_delete || log "WARNING: could not delete TPU VM ${NAME}; delete it by hand, it costs money while it exists."
    fi
  fi
  exit "${status}"
}
# A signal becomes an ordinary exit, so the EXIT trap deletes the VM.
trap 'exit 130' INT
trap 'exit 143' TERM
trap tear_down EXIT

if ! tpu_create; then
  die "creating TPU VM ${NAME} failed; if it exists anyway, delete it with: $(quote_cmd "${TPU_SCRIPTS_DIR}/delete_tpu_vm.sh" "--name=${NAME}" "--zone=${ZONE}" ${PROJECT:+"--project=${PROJECT}"})"
fi
VM_CREATED=1
tpu_install
tpu_run_experiment
