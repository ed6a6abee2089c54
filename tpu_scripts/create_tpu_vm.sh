#!/usr/bin/env bash
# Creates a Cloud TPU VM and installs this project on it.
set -euo pipefail

usage() {
  print_text <<'EOF'
Usage: create_tpu_vm.sh --name=NAME --zone=ZONE (--repo=URL | --local_checkout=DIR) [flags]

Creates a TPU VM with `gcloud compute tpus tpu-vm create`, then installs the
project on it over `gcloud compute tpus tpu-vm ssh`: a git clone of --repo (at
--ref) or a `tpu-vm scp --recurse` copy of --local_checkout, then
`python3 -m pip install -r requirements.txt` in it.

EOF
  usage_vm_flags
  echo
  usage_create_flags
  echo "  --skip_create            install on an existing VM, create nothing"
  echo
  usage_install_flags
  echo "  --skip_install           create the VM only"
  echo
  usage_common_flags
}

_here="${BASH_SOURCE[0]%/*}"
[[ "${_here}" != "${BASH_SOURCE[0]}" ]] || _here=.
# shellcheck source=SCRIPTDIR/common.sh
source "${_here}/common.sh"

ACCEPTED_FLAGS=(name zone project accelerator_type runtime_version preemptible spot
  skip_create repo ref local_checkout remote_dir python skip_install dry_run)
parse_flags "$@"

validate_vm_flags
if ((!SKIP_CREATE)); then validate_create_flags; fi
validate_install_flags
if ((SKIP_CREATE && SKIP_INSTALL)); then
  die_usage "--skip_create and --skip_install together leave nothing to do"
fi
require_gcloud

if ((!SKIP_CREATE)); then tpu_create; fi
if ((!SKIP_INSTALL)); then tpu_install; fi
