#!/usr/bin/env bash
# Deletes a Cloud TPU VM.
set -euo pipefail

usage() {
  print_text <<'EOF'
Usage: delete_tpu_vm.sh --name=NAME --zone=ZONE [--project=PROJECT] [--dry_run]

Deletes the TPU VM with `gcloud compute tpus tpu-vm delete NAME --zone=ZONE
--quiet` (no confirmation prompt). Checkpoints in the gs:// model_dir stay.

EOF
  usage_vm_flags
  echo
  usage_common_flags
}

_here="${BASH_SOURCE[0]%/*}"
[[ "${_here}" != "${BASH_SOURCE[0]}" ]] || _here=.
# shellcheck source=SCRIPTDIR/common.sh
source "${_here}/common.sh"

ACCEPTED_FLAGS=(name zone project dry_run)
parse_flags "$@"

validate_vm_flags
require_gcloud

tpu_delete
