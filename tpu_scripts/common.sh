#!/usr/bin/env bash
# Shared helpers for the Cloud TPU launch scripts in this folder.
#
# Sourced by them, not run (running it prints this note and exits with 2). The sourcing script must define `usage` (prints its
# --help text) and ACCEPTED_FLAGS (the flag names it takes, without "--"),
# then call `parse_flags "$@"`.
#
# Everything here is bash builtins only, so `--dry_run` works on a machine
# without gcloud (or anything else) on PATH.

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  printf '%s\n' "common.sh holds helpers sourced by the scripts in ${0%/*}/;" \
    "run create_tpu_vm.sh, run_experiment.sh, delete_tpu_vm.sh or launch.sh (--help)." >&2
  exit 2
fi
set -euo pipefail

# This folder (common.sh is always sourced by a path, so it has a '/').
# shellcheck disable=SC2034  # read by launch.sh
TPU_SCRIPTS_DIR="${BASH_SOURCE[0]%/*}"

# Defaults for every flag any script takes. parse_flags sets the variable whose
# name is the flag name in upper case (--model_dir=... sets MODEL_DIR).
# shellcheck disable=SC2034  # the variables are read by the sourcing scripts
init_flag_defaults() {
  # The VM
  NAME=""
  ZONE=""
  PROJECT=""
  # Creation
  ACCELERATOR_TYPE="v3-8"
  RUNTIME_VERSION="tpu-vm-tf-2.20.0-pjrt"
  PREEMPTIBLE=0
  SPOT=0
  SKIP_CREATE=0
  # Installation
  REPO=""
  REF=""
  LOCAL_CHECKOUT=""
  REMOTE_DIR="evonorm"
  PYTHON="python3"
  SKIP_INSTALL=0
  # The experiment
  EXPERIMENT=""
  MODE=""
  MODEL_DIR=""
  DATA_DIR=""
  PARAMS_OVERRIDE=""
  CONFIG_FILE=()
  # launch.sh
  KEEP_VM=0
  # Every script. DRY_RUN=1 in the environment works like --dry_run.
  DRY_RUN="${DRY_RUN:-0}"
  case "${DRY_RUN}" in
    1 | true) DRY_RUN=1 ;;
    *) DRY_RUN=0 ;;
  esac
}

BOOL_FLAGS=(preemptible spot skip_create skip_install keep_vm dry_run)
# Modes of Model Garden's run_experiment (train_lib), which the entry point uses.
VALID_MODES=(train eval train_and_eval continuous_eval continuous_train_and_eval
  train_and_post_eval)

SCRIPT_NAME="${0##*/}"

# ---------------------------------------------------------------------------
# Messages and exits

log() { printf '%s\n' "$*" >&2; }

# print_text <<'EOF' ... EOF: like cat, with builtins only.
print_text() {
  local line
  while IFS= read -r line || [[ -n "${line}" ]]; do
    printf '%s\n' "${line}"
  done
}

# Runtime failure: exit 1.
die() {
  printf '%s: ERROR: %s\n' "${SCRIPT_NAME}" "$*" >&2
  exit 1
}

# Usage error (bad or missing flag): exit 2.
die_usage() {
  printf '%s: ERROR: %s\n' "${SCRIPT_NAME}" "$*" >&2
  printf "Run '%s --help' for usage.\n" "${SCRIPT_NAME}" >&2
  exit 2
}

# ---------------------------------------------------------------------------
# Flag parsing

_in_list() {  # _in_list WORD LIST...
  local word="$1" item
  shift
  for item in "$@"; do
    [[ "${item}" == "${word}" ]] && return 0
  done
  return 1
}

# parse_flags "$@": --key=value flags, and bare --key (or --key=true/false) for
# the boolean ones. --config_file may be repeated. -h/--help prints usage.
parse_flags() {
  local arg key value has_value var
  for arg in "$@"; do
    case "${arg}" in
      -h | --help)
        usage
        exit 0
        ;;
      --*=*)
        key="${arg%%=*}"
        key="${key#--}"
        value="${arg#*=}"
        has_value=1
        ;;
      --?*)
        key="${arg#--}"
        value=""
        has_value=0
        ;;
      *) die_usage "unexpected argument '${arg}' (flags are --name=value)" ;;
    esac
    if ! [[ "${key}" =~ ^[a-z][a-z_]*$ ]] || ! _in_list "${key}" "${ACCEPTED_FLAGS[@]}"; then
      die_usage "unknown flag --${key}"
    fi
    if _in_list "${key}" "${BOOL_FLAGS[@]}"; then
      if ((has_value)); then
        case "${value}" in
          1 | true) value=1 ;;
          0 | false) value=0 ;;
          *) die_usage "flag --${key} takes no value (or =true/=false), got '${value}'" ;;
        esac
      else
        value=1
      fi
    elif ! ((has_value)); then
      die_usage "flag --${key} needs a value: --${key}=VALUE"
    fi
    var="${key^^}"
    if [[ "${key}" == config_file ]]; then
      [[ -n "${value}" ]] || die_usage "flag --config_file needs a value: --config_file=PATH"
      CONFIG_FILE+=("${value}")
    else
      printf -v "${var}" '%s' "${value}"
    fi
  done
}

# ---------------------------------------------------------------------------
# Validation (all usage errors, exit 2)

require_flag() {  # require_flag FLAG_NAME VALUE
  [[ -n "$2" ]] || die_usage "missing required flag --$1"
}

require_gs_path() {  # require_gs_path FLAG_NAME VALUE
  [[ "$2" == gs://?* ]] ||
    die_usage "--$1 must be a Cloud Storage path (gs://bucket/...), got '$2': TPU workers read and write through GCS"
}

validate_vm_flags() {
  require_flag name "${NAME}"
  require_flag zone "${ZONE}"
  # Cloud TPU node names: lower-case letter, then letters, digits, '-'.
  [[ "${NAME}" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die_usage "--name must be a lower-case letter followed by lower-case letters, digits or '-' (at most 63), got '${NAME}'"
}

validate_create_flags() {
  require_flag accelerator_type "${ACCELERATOR_TYPE}"
  require_flag runtime_version "${RUNTIME_VERSION}"
  if ((PREEMPTIBLE && SPOT)); then
    die_usage "--preemptible and --spot are mutually exclusive"
  fi
}

validate_install_flags() {
  ((SKIP_INSTALL)) && return 0
  if [[ -z "${REPO}" && -z "${LOCAL_CHECKOUT}" ]]; then
    die_usage "missing required flag --repo or --local_checkout (what to install on the VM)"
  fi
  if [[ -n "${REPO}" && -n "${LOCAL_CHECKOUT}" ]]; then
    die_usage "--repo and --local_checkout are mutually exclusive"
  fi
  if [[ -n "${REF}" && -z "${REPO}" ]]; then
    die_usage "--ref needs --repo"
  fi
  if [[ -n "${LOCAL_CHECKOUT}" ]]; then
    # Strip trailing slashes: `scp -r DIR/ host:X` and `scp -r DIR host:X` differ.
    while [[ "${LOCAL_CHECKOUT}" == ?*/ ]]; do LOCAL_CHECKOUT="${LOCAL_CHECKOUT%/}"; done
    [[ -f "${LOCAL_CHECKOUT}/requirements.txt" ]] ||
      die_usage "--local_checkout=${LOCAL_CHECKOUT} is not a checkout of this project (no requirements.txt in it)"
    if [[ -e "${LOCAL_CHECKOUT}/.venv" || -e "${LOCAL_CHECKOUT}/venv" ]]; then
      log "WARNING: ${LOCAL_CHECKOUT} holds a virtualenv; scp --recurse copies it too (use a clean checkout)"
    fi
  fi
  _normalize_remote_dir
}

_normalize_remote_dir() {
  require_flag remote_dir "${REMOTE_DIR}"
  require_flag python "${PYTHON}"
  # Remote commands are quoted, so '~' would not expand; the ssh session starts
  # in the home directory anyway.
  if [[ "${REMOTE_DIR}" == \~/?* ]]; then
    REMOTE_DIR="${REMOTE_DIR#"~/"}"
  fi
}

validate_run_flags() {
  require_flag experiment "${EXPERIMENT}"
  require_flag mode "${MODE}"
  require_flag model_dir "${MODEL_DIR}"
  _in_list "${MODE}" "${VALID_MODES[@]}" ||
    die_usage "--mode must be one of: ${VALID_MODES[*]}; got '${MODE}'"
  require_gs_path model_dir "${MODEL_DIR}"
  if [[ -n "${DATA_DIR}" ]]; then
    require_gs_path data_dir "${DATA_DIR}"
  fi
  _normalize_remote_dir
}

# Outside dry-run mode the commands really run: gcloud must exist.
require_gcloud() {
  ((DRY_RUN)) && return 0
  command -v gcloud >/dev/null 2>&1 ||
    die "gcloud not found on PATH; install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) or use --dry_run"
}

# ---------------------------------------------------------------------------
# Quoting and running

# shell_quote WORD: WORD as one shell word. Plain words stay as they are,
# others are single-quoted; control characters (newlines) use bash's $'...',
# so every command prints on one line.
shell_quote() {
  local s="$1"
  if [[ -n "${s}" && "${s}" != *[!A-Za-z0-9_./:=@%+,-]* ]]; then
    printf '%s' "${s}"
  elif [[ "${s}" =~ ^(--[A-Za-z0-9][-A-Za-z0-9_]*=)(.+)$ ]]; then
    # --flag='a value' reads better than '--flag=a value'; same word.
    printf '%s' "${BASH_REMATCH[1]}"
    shell_quote "${BASH_REMATCH[2]}"
  elif [[ "${s}" == *[[:cntrl:]]* ]]; then
    printf '%q' "${s}"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# quote_cmd ARGS...: the command line that runs ARGS, on one line.
quote_cmd() {
  local out="" word q
  for word in "$@"; do
    q="$(shell_quote "${word}")"
    # A first word like A=B would be read as an assignment.
    if [[ -z "${out}" && "${q}" == *=* && "${q}" != \'* ]]; then
      q="'${q}'"
    fi
    out+="${out:+ }${q}"
  done
  printf '%s' "${out}"
}

# run ARGS...: with DRY_RUN=1 print the command line (to stdout, one line,
# nothing else); otherwise log it to stderr as "+ ..." and run it.
run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote_cmd "$@")"
  else
    printf '+ %s\n' "$(quote_cmd "$@")" >&2
    "$@"
  fi
}

# ---------------------------------------------------------------------------
# The gcloud steps, shared by the scripts and by launch.sh

_gcloud_location_flags() {  # appends to the array named by $1
  local -n _out="$1"
  _out+=("--zone=${ZONE}")
  if [[ -n "${PROJECT}" ]]; then
    _out+=("--project=${PROJECT}")
  fi
}

# tpu_ssh REMOTE_COMMAND: run a command on the VM (worker 0), in the foreground.
tpu_ssh() {
  local cmd=(gcloud compute tpus tpu-vm ssh "${NAME}")
  _gcloud_location_flags cmd
  cmd+=("--command=$1")
  run "${cmd[@]}"
}

tpu_create() {
  local cmd=(gcloud compute tpus tpu-vm create "${NAME}")
  _gcloud_location_flags cmd
  cmd+=("--accelerator-type=${ACCELERATOR_TYPE}" "--version=${RUNTIME_VERSION}")
  if ((PREEMPTIBLE)); then cmd+=(--preemptible); fi
  if ((SPOT)); then cmd+=(--spot); fi
  run "${cmd[@]}"
}

tpu_install() {
  local pip_install
  pip_install="$(quote_cmd "${PYTHON}" -m pip install -r requirements.txt)"
  if [[ -n "${LOCAL_CHECKOUT}" ]]; then
    local cmd=(gcloud compute tpus tpu-vm scp --recurse "${LOCAL_CHECKOUT}" "${NAME}:${REMOTE_DIR}")
    _gcloud_location_flags cmd
    run "${cmd[@]}"
    tpu_ssh "$(quote_cmd cd "${REMOTE_DIR}") && ${pip_install}"
  else
    local remote
    remote="$(quote_cmd git clone "${REPO}" "${REMOTE_DIR}") && $(quote_cmd cd "${REMOTE_DIR}")"
    if [[ -n "${REF}" ]]; then
      remote+=" && $(quote_cmd git checkout "${REF}")"
    fi
    tpu_ssh "${remote} && ${pip_install}"
  fi
}

# The --params_override value: TPUStrategy, the TFDS data_dir, then the user's
# overrides (later keys win, so --params_override can change any of these).
experiment_params_override() {
  local parts=("runtime.distribution_strategy=tpu")
  if [[ -n "${DATA_DIR}" ]]; then
    parts+=("task.train_data.tfds_data_dir=${DATA_DIR}"
      "task.validation_data.tfds_data_dir=${DATA_DIR}")
  fi
  if [[ -n "${PARAMS_OVERRIDE}" ]]; then
    parts+=("${PARAMS_OVERRIDE}")
  fi
  local IFS=,
  printf '%s' "${parts[*]}"
}

tpu_run_experiment() {
  local train=("${PYTHON}" -m evonorm_vision.train
    "--experiment=${EXPERIMENT}" "--mode=${MODE}" "--model_dir=${MODEL_DIR}"
    --tpu=local)
  local config_file
  for config_file in "${CONFIG_FILE[@]}"; do
    train+=("--config_file=${config_file}")
  done
  train+=("--params_override=$(experiment_params_override)")
  tpu_ssh "$(quote_cmd cd "${REMOTE_DIR}") && $(quote_cmd "${train[@]}")"
}

tpu_delete() {
  local cmd=(gcloud compute tpus tpu-vm delete "${NAME}")
  _gcloud_location_flags cmd
  cmd+=(--quiet)
  run "${cmd[@]}"
}

# ---------------------------------------------------------------------------
# --help sections

usage_vm_flags() {
  print_text <<'EOF'
The TPU VM:
  --name=NAME              TPU VM name (required): lower-case letters, digits, '-'
  --zone=ZONE              zone, e.g. europe-west4-a (required)
  --project=PROJECT        Google Cloud project (default: gcloud's configured one)
EOF
}

usage_create_flags() {
  print_text <<'EOF'
Creating it:
  --accelerator_type=TYPE  TPU type, a single host (default: v3-8)
  --runtime_version=VER    TPU VM software version (default: tpu-vm-tf-2.20.0-pjrt,
                           TF 2.20). Check what your zone offers with
                           `gcloud compute tpus versions list --zone=ZONE`.
  --preemptible            create a preemptible TPU
  --spot                   create a Spot TPU (not with --preemptible)
EOF
}

usage_install_flags() {
  print_text <<'EOF'
Installing the project on it (one of --repo, --local_checkout):
  --repo=URL               git URL to clone on the VM
  --ref=REF                branch, tag or commit to check out (default: the
                           repository's default branch)
  --local_checkout=DIR     copy this local checkout with `tpu-vm scp --recurse`
                           instead (copied as is: use a clean checkout)
  --remote_dir=DIR         where the project goes on the VM, relative to the
                           home directory (default: evonorm); must not exist yet
  --python=PYTHON          interpreter on the VM, for pip and training
                           (default: python3; the pinned requirements need 3.11+)
  then runs `PYTHON -m pip install -r requirements.txt` in it.
EOF
}

usage_run_flags() {
  print_text <<'EOF'
The experiment (runs `python3 -m evonorm_vision.train ... --tpu=local` in the
project folder on the VM, over a foreground ssh session):
  --experiment=NAME        registered experiment, e.g. evonorm_resnet50_imagenet
                           (required)
  --mode=MODE              train, eval, train_and_eval (or continuous_eval,
                           continuous_train_and_eval, train_and_post_eval) (required)
  --model_dir=gs://...     checkpoints and summaries (required, must be gs://)
  --data_dir=gs://...      TFDS data_dir; becomes
                           task.train_data.tfds_data_dir=...,task.validation_data.tfds_data_dir=...
  --config_file=PATH       YAML config file on the VM (relative to the project
                           folder), repeatable; applied in order
  --params_override=K=V,.. more overrides, comma-separated key=value pairs
  The run always gets runtime.distribution_strategy=tpu (TPUStrategy), then the
  --data_dir overrides, then --params_override; later keys win.
EOF
}

usage_common_flags() {
  print_text <<'EOF'
Common:
  --dry_run                print the commands that would run, one a line, and
                           run nothing (DRY_RUN=1 in the environment does the same)
  -h, --help               this help
Exit status: 0 on success, 2 on a usage error, otherwise the failing command's.
EOF
}

init_flag_defaults
