"""The command line, end to end in a subprocess: JSON output, artifacts, errors as one line with no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uap_core", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_generate_evaluate_transfer_on_cifar(cifar_npz, tmp_path):
    out = tmp_path / "uaps"
    done = cli("generate", "--model", "cifar_resnet20", "--algorithm", "sgd_uap", "--eps", "10/255",
               "--norm", "linf", "--images", str(cifar_npz), "--fit", "200", "--holdout", "200", "--seed", "3",
               "--device", "cpu", "--epochs", "2", "--batch-size", "50", "--step-size", "2/255", "--out", str(out),
               "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("fooling_ratio", "random_fooling_ratio", "dominant_label", "dominant_share", "seconds", "artifact"):
        assert key in summary
    artifact = Path(summary["artifact"])
    assert artifact.exists() and artifact.with_suffix(".json").exists() and artifact.with_suffix(".png").exists()
    assert artifact.name == "cifar_resnet20_sgd_uap_linf_10_seed3.safetensors"
    assert summary["heldout_images"] == 200
    # 8 steps of 2/255 (the default 1/255 leaves δ weaker than ±eps noise after 8 steps: 0.265 vs 0.415): measured
    # 0.715 on the 200 held-out images against 0.415 for the run's own random ±eps noise
    assert summary["fooling_ratio"] >= summary["random_fooling_ratio"] + 0.15, summary
    # CIFAR labels are known: the fooling rate (1 − accuracy under δ) beside the fooling ratio
    assert summary["labelled_images"] == 200 and "fooling_rate_reason" not in summary
    assert summary["fooling_rate"] == pytest.approx(1 - summary["attacked_accuracy"])

    evaluated = cli("evaluate", "--uap", str(artifact), "--model", "cifar_resnet20", "--images", str(cifar_npz),
                    "--limit", "300", "--device", "cpu", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    measured = json.loads(evaluated.stdout)
    assert measured["count"] == 300
    assert measured["fooling_ratio"] >= measured["random_fooling_ratio"] + 0.15, measured  # measured 0.787 vs 0.513
    # the fooling rate against an independent count on the same 300 labelled images
    from uap_core.artifacts import load_uap
    from uap_core.images import load_images
    from uap_core.models import load_model
    resnet20 = load_model("cifar_resnet20", "cpu")
    first = load_images(str(cifar_npz), 32, 32, list(resnet20.spec.class_names), limit=300)
    with torch.no_grad():
        attacked = resnet20((first.pixels.float() / 255 + load_uap(str(artifact)).delta).clamp(0, 1)).argmax(1)
        clean = resnet20(first.pixels[:200].float() / 255).argmax(1)
    assert measured["labelled_images"] == 300
    assert measured["fooling_rate"] == pytest.approx(1 - (attacked == first.labels).float().mean().item(), abs=1e-6)

    # a second UAP to make the matrix 2 × 2
    other = tmp_path / "zero.safetensors"
    from uap_core.artifacts import save_uap
    save_uap(torch.zeros(3, 32, 32), {"note": "zero"}, other)
    table = cli("transfer", "--uap", str(artifact), str(other), "--models", "cifar_resnet20", "cifar_resnet56",
                "--images", str(cifar_npz), "--limit", "200", "--device", "cpu", "--json")
    assert table.returncode == 0, table.stderr
    matrix = json.loads(table.stdout)
    assert matrix["models"] == ["cifar_resnet20", "cifar_resnet56"]
    assert len(matrix["fooling_ratio"]) == 2 and matrix["fooling_ratio"][1] == [0.0, 0.0]  # zero δ fools nobody
    # ... but its fooling rate is the model's clean error rate on the 200 labelled images
    assert matrix["labelled_images"] == 200
    assert matrix["fooling_rate"][1][0] == pytest.approx(1 - (clean == first.labels[:200]).float().mean().item())
    # the δ on its own model (the first 200 images; measured 0.78) beats random noise there (0.513 on the first 300)
    assert matrix["fooling_ratio"][0][0] >= measured["random_fooling_ratio"] + 0.1, matrix
    text = cli("transfer", "--uap", str(artifact), "--models", "cifar_resnet20", "--images", str(cifar_npz),
               "--limit", "100", "--device", "cpu")
    assert text.returncode == 0 and "cifar_resnet20" in text.stdout


@pytest.mark.parametrize("args, message", [
    (("generate", "--model", "nope"), "unknown model 'nope'"),
    (("generate", "--eps", "abc"), "eps must be a number"),
    (("generate", "--eps", "0"), "eps = 0 is out of range"),
    (("generate", "--algorithm", "uap", "--minibatch-size", "3"), "--minibatch-size does not apply to uap"),
    (("generate", "--batch-size", "0"), "batch_size = 0 is out of range"),
    (("generate", "--target", "5000"), "target class = 5000 is out of range"),
    (("generate", "--images", "/no/such/folder"), "no such file or folder"),
    (("evaluate", "--uap", "/no/such.safetensors"), "no such file"),
    (("generate", "--model", "vgg16", "--weights", "/no/such/file.pth"), "weights file not found"),
])
def test_errors_are_one_clear_line(args, message, tmp_path, capsys):
    from uap_core.__main__ import main

    extra = ["--out", str(tmp_path)] if args[0] == "generate" else ["--json"]
    assert main([*args, *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_an_error_in_a_real_process_has_no_traceback(tmp_path):
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(b"\x80\x04cos\nsystem\n.")  # a pickle posing as safetensors
    done = cli("evaluate", "--uap", str(bad), "--model", "efficientnet_lite0", "--images", "samples")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "safetensors" in lines[0]


def test_list_models_json():
    done = cli("list-models", "--json")
    assert done.returncode == 0
    listed = {m["name"]: m for m in json.loads(done.stdout)}
    assert listed["efficientnet_lite0"]["state"] == "available"
    assert listed["vgg16"]["state"] in ("available", "needs download")


def test_out_that_is_a_file_is_refused_before_the_run(tmp_path, capsys):
    """--out naming an existing file: one line, exit 2, and no run is started (it is checked first)."""
    from uap_core.__main__ import main

    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    assert main(["generate", "--model", "cifar_resnet20", "--images", "/no/such/data.npz", "--out",
                 str(existing)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is a file, not a folder" in lines[0], lines
    assert existing.read_text() == "keep me"
    (tmp_path / "blocker").write_text("")
    assert main(["generate", "--out", str(tmp_path / "blocker" / "sub")]) == 2  # a parent that is a file
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot create the output folder" in lines[0], lines


def test_generate_options_are_the_declared_settings():
    """generate's options come from RunConfig's declaration (flag, default, choices from the core's constants), and
    the options left at their defaults make the default RunConfig."""
    from uap_core.__main__ import build_parser
    from uap_core.params import describe
    from uap_core.run import NORMS, RunConfig

    parser = build_parser()
    generate = next(a for a in parser._actions if a.dest == "command").choices["generate"]
    options = {action.dest: action for action in generate._actions}
    declared = [spec for spec in describe(RunConfig) if spec["cli"]]
    assert len(declared) == 29 and options["norm"].choices == list(NORMS)
    for spec in declared:
        assert options[spec["name"]].option_strings == [spec["flag"]]
        assert options[spec["name"]].choices == (list(spec["choices"]) if spec["choices"] else None)
    args = parser.parse_args(["generate"])
    assert args.eps == "10/255"
    from_cli = RunConfig(**{spec["name"]: getattr(args, spec["name"]) for spec in declared}).validated()
    assert from_cli == RunConfig().validated()


def test_usage_names_the_command_the_user_typed(monkeypatch):
    """`uap …` (the installed command) and `python -m uap_core …` each see their own name in usage lines."""
    from uap_core.__main__ import build_parser

    monkeypatch.setattr(sys, "argv", ["/venv/bin/uap", "--help"])
    assert build_parser().format_usage().startswith("usage: uap ")
    monkeypatch.setattr(sys, "argv", ["/repo/uap_core/__main__.py", "--help"])
    assert build_parser().format_usage().startswith("usage: python -m uap_core ")
