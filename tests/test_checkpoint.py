"""Long runs survive interruption: checkpoints (uap_core/checkpoint.py) and ``generate --resume``, under the faults
a long run meets. CIFAR-10 ResNet-20, 40 fit / 20 held-out images, 8 steps of 10 images: cheap.

- a real CLI process killed with SIGKILL during a step (SGA, SGD-UAP, DF-UAP: Adam's moments, GAP: the generator
  and its optimiser) and resumed with ``generate --resume`` gives the δ and history of an uninterrupted run, bit for
  bit (on the CPU);
- killed during a checkpoint write: the previous checkpoint stays readable and resumes to the same result, and the
  killed write's temp file is cleaned up;
- the disk full while checkpointing: the run goes on, one warning, the previous checkpoint intact, nothing partial;
- a damaged file, another config, other weights, another version of the project: refused with one line;
- a CPU checkpoint resumed on CUDA (skipped without a GPU).

The killed processes run a small wrapper around the CLI's ``main`` that blocks at a chosen point (after the
method's step ``at`` — its state moved, not yet recorded by the run — or halfway through writing checkpoint number
``at``) and touches a marker file; the test then kills it. All of them start at once (one fixture), since starting
Python and torch is most of their cost.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from uap_core import checkpoint as checkpoint_module
from uap_core.__main__ import main
from uap_core.artifacts import load_uap
from uap_core.atomic import TEMP_SUFFIX
from uap_core.checkpoint import CheckpointPolicy, load_checkpoint
from uap_core.errors import ArtifactError, ParameterError
from uap_core.jsonable import jsonable
from uap_core.run import Run, RunConfig

REPO = Path(__file__).resolve().parent.parent
TIMINGS = ("elapsed", "images_per_second", "step_seconds", "seconds")
COMMON = ["--model", "cifar_resnet20", "--eps", "8/255", "--fit", "40", "--holdout", "20", "--seed", "1",
          "--device", "cpu", "--epochs", "2", "--eval-every", "4"]  # 4 steps per epoch of 10 images
PARAMS = {  # small batches: 4 steps per epoch
    "sga": {"batch_size": 10, "minibatch_size": 5, "inner_passes": 1},
    "sgd_uap": {"batch_size": 10},
    "df_uap": {"batch_size": 10},
    "gap": {"batch_size": 10, "ngf": 4, "n_blocks": 1},
}
KILL_IN_STEP = 5  # every 3 steps a checkpoint: killed in step 5, the run resumes after step 3 (mid-epoch)

WRAPPER = r"""
import pathlib, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))  # as the test process: the same float summation order
marker, mode, at = pathlib.Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
calls = []

def hang():
    marker.touch()
    time.sleep(600)

if mode == "step":  # block after the method's step number `at`, before the run records it
    from uap_core import run as module
    original = module.Run._step
    def patched(self, batch, spent):
        stats = original(self, batch, spent)
        calls.append(1)
        if len(calls) == at:
            hang()
        return stats
    module.Run._step = patched
else:  # "write": block halfway through writing checkpoint number `at`
    from uap_core import atomic
    original = atomic._write_fully
    def patched(fileobj, data):
        if b"uap-explorer-checkpoint" in data:  # a checkpoint, not the artifact
            calls.append(1)
            if len(calls) == at:
                fileobj.write(data[: len(data) // 2])
                fileobj.flush()
                hang()
        original(fileobj, data)
    atomic._write_fully = patched
from uap_core.__main__ import main
sys.exit(main(sys.argv[5:]))
"""


def generate_args(method: str, out: Path, *extra: str) -> list[str]:
    options = [text for name, value in PARAMS[method].items() for text in ("--" + name.replace("_", "-"), str(value))]
    return ["generate", "--algorithm", method, *COMMON, *options, "--out", str(out), "--name", method, "--json", *extra]


def run_config(method: str, images: Path, **changes) -> RunConfig:
    """The RunConfig the command line makes of :func:`generate_args`."""
    return RunConfig(**{"model": "cifar_resnet20", "algorithm": method, "eps": "8/255", "images": str(images),
                        "fit": 40, "holdout": 20, "seed": 1, "device": "cpu", "epochs": 2, "eval_every": 4,
                        "params": PARAMS[method], "stream": "auto", **changes})


def comparable(history: list[dict]) -> str:
    """A history as an artifact stores it (JSON: NaN as null), without the timings."""
    return json.dumps(jsonable([{k: v for k, v in event.items() if k not in TIMINGS} for event in history]),
                      sort_keys=True)


def artifact(path: Path) -> tuple[torch.Tensor, str, dict]:
    """(δ, comparable history, metadata) of a saved artifact."""
    meta = json.loads(path.with_suffix(".json").read_text())
    return load_uap(path).delta, comparable(meta["history"]), meta


@pytest.fixture(scope="module")
def killed(cifar_npz, tmp_path_factory):
    """Every kill at once: per method a CLI run killed in step 5 (checkpoints every 3 steps), and an SGD-UAP run
    killed halfway through writing its second checkpoint (every 2 steps). {case: its output folder}; a copy of each
    checkpoint as the kill left it in ``pristine/<case>.checkpoint`` (the tests that resume them remove them)."""
    root = tmp_path_factory.mktemp("killed")
    cases = {method: (["--checkpoint-every", "3"], "step", KILL_IN_STEP) for method in PARAMS}
    cases["write"] = (["--checkpoint-every", "2"], "write", 2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = {}
    for case, (extra, mode, at) in cases.items():
        method = "sgd_uap" if case == "write" else case
        out = root / case
        args = generate_args(method, out, "--images", str(cifar_npz), *extra)
        with open(root / f"{case}.err", "w") as err:  # a file, not a pipe: a full pipe would block the run
            processes[case] = (subprocess.Popen([sys.executable, "-c", WRAPPER, str(torch.get_num_threads()),
                                                 str(root / f"{case}.marker"), mode, str(at), *args],
                                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err), out)
    deadline = time.monotonic() + 300
    try:
        for case, (process, _out) in processes.items():
            while not (root / f"{case}.marker").exists():
                assert process.poll() is None, (f"{case}: the run ended before it was killed: "
                                                f"{(root / f'{case}.err').read_text()}")
                assert time.monotonic() < deadline, f"{case}: the run never reached the point to kill it at"
                time.sleep(0.05)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            assert process.returncode == -signal.SIGKILL
    finally:
        for process, _out in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    (root / "pristine").mkdir()
    for case, (_process, out) in processes.items():
        (checkpoint,) = out.glob("*.checkpoint")
        shutil.copy(checkpoint, root / "pristine" / f"{case}.checkpoint")
    return {**{case: out for case, (_process, out) in processes.items()}, "pristine": root / "pristine"}


@pytest.fixture(scope="module")
def references(cifar_npz, tmp_path_factory):
    """The uninterrupted runs, through the same command line (in this process): {method: (δ, history)}."""
    root = tmp_path_factory.mktemp("whole")
    cache = {}

    def reference(method: str):
        if method not in cache:
            assert main(generate_args(method, root, "--images", str(cifar_npz))) == 0
            delta, history, _meta = artifact(root / f"{method}.safetensors")
            cache[method] = (delta, history)
        return cache[method]

    return reference


def resume_cli(path: Path, capsys) -> tuple[torch.Tensor, str, dict]:
    capsys.readouterr()
    assert main(["generate", "--resume", str(path), "--json"]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return artifact(Path(summary["artifact"]))


@pytest.mark.parametrize("method", list(PARAMS))
def test_a_killed_cli_run_resumes_bit_for_bit(method, killed, references, capsys):
    out = killed[method]
    path = out / f"{method}.checkpoint"
    saved = load_checkpoint(path)
    assert saved.step == 3 and saved.method == method and saved.every == "3"
    assert not (out / f"{method}.safetensors").exists()  # killed: no artifact
    delta, history, meta = resume_cli(path, capsys)
    whole_delta, whole_history = references(method)
    assert torch.equal(delta, whole_delta), f"{method}: the resumed δ differs from the uninterrupted run's"
    assert history == whole_history
    assert meta["summary"]["steps"] == 8 and meta["summary"]["reason"] == "completed"
    assert not path.exists()  # finished and saved: the checkpoint is removed
    assert sorted(p.name for p in out.iterdir()) == [f"{method}.{s}" for s in ("json", "png", "safetensors")]


def test_killed_while_writing_a_checkpoint_keeps_the_previous_one(killed, references, capsys):
    out = killed["write"]
    path = out / "sgd_uap.checkpoint"
    stale = [p for p in out.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    assert len(stale) == 1 and stale[0].name.startswith(".sgd_uap.checkpoint.")  # the half-written temp file
    assert stale[0].stat().st_size < path.stat().st_size
    assert load_checkpoint(path).step == 2  # the previous checkpoint, whole
    delta, history, _meta = resume_cli(path, capsys)  # goes on checkpointing every 2 steps: cleans up first
    whole_delta, whole_history = references("sgd_uap")
    assert torch.equal(delta, whole_delta) and history == whole_history
    assert sorted(p.name for p in out.iterdir()) == [f"sgd_uap.{s}" for s in ("json", "png", "safetensors")]


def test_ctrl_c_stops_saves_and_checkpoints_then_resume_finishes_the_run(cifar_npz, references, tmp_path, capsys,
                                                                        monkeypatch):
    """SIGINT during step 3 (no periodic checkpoint: --checkpoint-every 100): the run stops after that step, saves
    its best δ so far and a checkpoint of step 3; --resume then finishes it as if never stopped."""
    from uap_core import run as run_module

    step = run_module.Run._step

    def interrupted_in_step_3(self, batch, spent):
        stats = step(self, batch, spent)
        if stats["image_gradients_total"] == 30:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
        return stats

    monkeypatch.setattr(run_module.Run, "_step", interrupted_in_step_3)
    assert main(generate_args("sgd_uap", tmp_path, "--images", str(cifar_npz), "--checkpoint-every", "100")) == 0
    monkeypatch.undo()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["reason"], summary["steps"]) == ("stopped", 3)
    assert summary["checkpoint"] == str(tmp_path / "sgd_uap.checkpoint") and load_checkpoint(summary["checkpoint"]).step == 3
    delta, history, _meta = resume_cli(Path(summary["checkpoint"]), capsys)  # overwrites the stopped run's artifact
    whole_delta, whole_history = references("sgd_uap")
    assert torch.equal(delta, whole_delta) and history == whole_history


def test_disk_full_while_checkpointing(cifar_npz, references, tmp_path, monkeypatch):
    """ENOSPC from the second checkpoint on: the run goes on to the same result, one warning, the first checkpoint
    intact, no temp file left."""
    from uap_core import atomic

    write = atomic._write_fully

    def full_disk(fileobj, data):
        if b"uap-explorer-checkpoint" in data and (tmp_path / "sgd_uap.checkpoint").exists():
            raise OSError(28, "No space left on device")
        write(fileobj, data)

    monkeypatch.setattr(atomic, "_write_fully", full_disk)
    messages = []
    path = tmp_path / "sgd_uap.checkpoint"
    policy = CheckpointPolicy(path, every_steps=1, notify=messages.append)
    run = Run(run_config("sgd_uap", cifar_npz), checkpoints=policy)
    result = run.run_to_end()
    assert len(messages) == 1 and "checkpoint of step 2 not written (No space left on device" in messages[0]
    assert "the checkpoint of step 1 is kept" in messages[0]
    assert load_checkpoint(path).step == 1 and run.checkpoints.written_step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sgd_uap.checkpoint"]  # nothing partial
    whole_delta, whole_history = references("sgd_uap")
    assert torch.equal(result.delta, whole_delta) and comparable(result.history) == whole_history


def one_error_line(args: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_damaged_or_foreign_checkpoint_is_refused_with_one_line(killed, tmp_path, capsys, monkeypatch):
    from uap_core import __version__

    good = killed["pristine"] / "gap.checkpoint"
    data = good.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "flipped": data[:-9] + bytes([data[-9] ^ 1]) + data[-8:],
               "text": b"not a checkpoint at all"}
    for name, content in damaged.items():
        path = tmp_path / f"{name}.checkpoint"
        path.write_bytes(content)
        line = one_error_line(["generate", "--resume", str(path)], capsys)
        assert line.startswith(f"error: {path} is not a readable checkpoint ("), (name, line)
        if name == "flipped":  # one bit of a tensor: only the checksum sees it
            assert "do not match their checksum" in line
        with pytest.raises(ArtifactError):
            load_checkpoint(path)
    line = one_error_line(["generate", "--resume", str(good), "--eps", "10/255", "--seed", "1", "--ngf", "8"], capsys)
    assert line == ("error: the checkpoint gap.checkpoint is of another run: eps 0.0313725 → 0.0392157; ngf 4 → 8 "
                    "— leave these settings out (or give the checkpoint's) to resume it")
    assert "algorithm gap → sgd_uap" in one_error_line(["generate", "--resume", str(good), "--algorithm", "sgd_uap"],
                                                        capsys)
    monkeypatch.setattr(checkpoint_module, "__version__", "9.9.9")
    assert one_error_line(["generate", "--resume", str(good)], capsys) == (
        f"error: the checkpoint gap.checkpoint was written by UAP Explorer {__version__}, this is 9.9.9: resume it "
        f"with that version")
    assert good.read_bytes() == data  # refused: left as it was


def test_checkpoint_every_takes_steps_or_seconds(tmp_path, capsys, monkeypatch):
    from uap_core.checkpoint import parse_every

    assert parse_every("50") == (50, None) and parse_every("120s") == (None, 120.0)
    assert parse_every("1.5s") == (None, 1.5) and parse_every(None) == (None, None)
    for bad in ("0", "0s", "2.5", "5m", "-3", "s"):
        with pytest.raises(ParameterError, match="takes a number of steps"):
            parse_every(bad)
    line = one_error_line(["generate", "--checkpoint-every", "5m", "--out", str(tmp_path)], capsys)
    assert line == "error: --checkpoint-every takes a number of steps (50) or of seconds (120s), got '5m'"
    now = [100.0]
    monkeypatch.setattr(checkpoint_module.time, "monotonic", lambda: now[0])
    by_time = CheckpointPolicy.every_text(tmp_path / "x.checkpoint", "120s")
    by_steps = CheckpointPolicy.every_text(tmp_path / "x.checkpoint", 50)
    now[0] += 119.0
    assert not by_time.due(7) and not by_steps.due(49) and by_steps.due(100)
    now[0] += 1.0
    assert by_time.due(8)


def test_other_weights_are_refused(killed):
    from uap_core.models import load_model

    model = load_model("cifar_resnet20", "cpu")
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    run = Run.from_checkpoint(killed["pristine"] / "df_uap.checkpoint", model=model)
    with pytest.raises(ParameterError, match="written with other weights of cifar_resnet20"):
        next(run.events())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
@pytest.mark.parametrize("method", ["df_uap", "gap"])
def test_a_cpu_checkpoint_resumes_on_cuda(method, cifar_npz, tmp_path):
    """Adam's moments and GAP's generator move to the GPU; the saved part of the history is kept, the run finishes."""
    source = tmp_path / "cpu.checkpoint"
    run = Run(run_config(method, cifar_npz), checkpoints=CheckpointPolicy(source, every_steps=3))
    for event in run.events():
        if event.kind == "step" and event.step == 4:
            break
    saved = load_checkpoint(source)
    resumed = Run.from_checkpoint(source, {"device": "cuda", "precision": "fp32"})
    result = resumed.run_to_end()
    assert result.info["device"].startswith("cuda") and result.steps == 8 and result.reason == "completed"
    prefix = len(saved.state["history"])
    assert comparable(result.history[:prefix]) == comparable(saved.state["history"])
    assert torch.isfinite(result.delta).all() and 0 < result.delta.abs().max().item() <= 8 / 255 + 1e-6
    moments = [t for s in resumed.algorithm.optimizer.state.values() for t in s.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0]
    assert moments and all(t.device.type == "cuda" for t in moments)
