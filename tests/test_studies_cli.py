"""``python -m uap_core study``: the list, a tiny study writing its CSV / JSON / HTML, one-line errors with exit 2, and
Ctrl-C stopping a study while still writing what finished."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uap_core.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def tiny(npz: Path, out: Path, *extra: str) -> list[str]:
    """images_needed on CIFAR-10 ResNet-20: SGD-UAP, 10 and 20 fit images, 100 held out, 2 updates per run."""
    return ["study", "images_needed", "--images", str(npz), "--methods", "sgd_uap", "--fit-sizes", "10,20",
            "--seeds", "0", "--holdout", "100", "--epochs", "1", "--min-steps", "2", "--device", "cpu",
            "--out", str(out), "--png", "off", *extra]


def test_study_list(capsys):
    assert main(["study", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed[:3]] == ["images_needed", "batch_stability", "transfer_ensembles"]
    assert main(["study", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == listed


def test_tiny_study_writes_csv_json_html(cifar_npz, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(tiny(cifar_npz, out, "--json")) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["study"] == "images_needed" and report["stopped"] is False
    files = {Path(p).name for p in report["files"]}
    assert files == {"images_needed.csv", "images_needed_by_size.csv", "images_needed.json", "images_needed.html"}
    assert "sgd_uap · 10 images · seed 0" in captured.err and "done" in captured.err, "progress on stderr"
    rows = list(csv.DictReader((out / "images_needed.csv").open()))
    assert [(r["method"], int(r["fit_images"]), int(r["seed"])) for r in rows] == [("sgd_uap", 10, 0),
                                                                                  ("sgd_uap", 20, 0)]
    assert all(0 <= float(r["fooling_ratio"]) <= 1 and int(r["heldout_images"]) == 100 for r in rows)
    assert all(0 <= float(r["fooling_rate"]) <= 1 for r in rows)  # CIFAR labels: 1 − accuracy under δ beside it
    saved = json.loads((out / "images_needed.json").read_text())
    assert saved["settings"]["fit_sizes"] == [10, 20] and saved["settings"]["min_steps"] == 2
    assert saved["summary"]["sgd_uap"]["largest_fit"] == 20 and saved["environment"]["device"] == "cpu"
    html = (out / "images_needed.html").read_text()
    assert "plotly" in html.lower() and "number of fit images" in html

    assert main(tiny(cifar_npz, tmp_path / "plain")) == 0
    printed = capsys.readouterr().out.split()
    assert printed[0].endswith("images_needed.csv") and len(printed) == 4, "without --json: the paths written"


@pytest.mark.parametrize("extra, message", [
    (["--fit-sizes", "10,abc"], "fit_sizes"),
    (["--methods", "sga,nope"], "methods"),
    (["--holdout", "1900", "--fit-sizes", "500"], "1900 + 500"),
    (["--model", "nope"], "unknown model"),
])
def test_bad_setting_is_one_line_and_exit_2(cifar_npz, tmp_path, capsys, extra, message):
    argv = tiny(cifar_npz, tmp_path / "out")
    for i in range(0, len(extra), 2):  # replace the tiny study's value of the option
        if extra[i] in argv:
            argv[argv.index(extra[i]) + 1] = extra[i + 1]
        else:
            argv += extra[i:i + 2]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "out" / "images_needed.csv").exists()


def test_out_is_a_file(cifar_npz, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(tiny(cifar_npz, blocker)) == 2
    assert capsys.readouterr().err.startswith("error: --out")


def test_ctrl_c_stops_and_writes_what_finished(cifar_npz, tmp_path):
    """SIGINT during the second run (1,000 fit images, 20 updates of 250): the study stops after the current step and
    still writes its outputs, with the finished first run only and stopped = true."""
    out = tmp_path / "out"
    argv = tiny(cifar_npz, out, "--json")
    argv[argv.index("--fit-sizes") + 1] = "10,1000"
    argv[argv.index("--min-steps") + 1] = "20"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "uap_core", *argv], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line, "".join(err) + (process.stdout.read() if process.poll() is not None else "")
            err.append(line)
            if "1000 images" in line:
                break
        process.send_signal(signal.SIGINT)
        stdout, rest = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    err.append(rest)
    assert process.returncode == 0, "".join(err)
    report = json.loads(stdout)
    assert report["stopped"] is True
    rows = list(csv.DictReader((out / "images_needed.csv").open()))
    assert [int(r["fit_images"]) for r in rows] == [10]
    assert json.loads((out / "images_needed.json").read_text())["stopped"] is True
    assert "stopping after the current step" in "".join(err)
