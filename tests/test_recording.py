"""Recorded runs (uap_core/recording.py) and their replays (uap_ui/replay.py).

- the file: every event kept (keys unknown today too), δ checkpoints 8-bit within s/255, the kept δ float16,
  written atomically, read without pickles; replay positions;
- ``generate --record`` on a real (tiny) CIFAR-10 ResNet-20 run: the recording beside the artifact holds the
  artifact's history and δ, and its command parses back to the run's settings;
- the shipped recorded race (assets/recordings, built by assets/make_recordings.py) shows what the SGA paper
  found: SGA steadier than small-batch SGD-UAP and ahead of both SGD-UAPs on held-out images;
- the replay on Home, the race and the Library says it is recorded, on what machine, when, in how long and by
  which command, and scrubbed to the end its charts end on the recorded values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import time

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from ui_helpers import PAGES, ROOT, plotly_specs
from uap_core.recording import (Checkpoint, Recording, decode_delta_8bit, encode_delta_8bit, list_recordings,
                                load_recording, races, recording_path, replay_frames, replay_seconds,
                                save_recording)

SHIPPED = ROOT / "assets" / "recordings"
CIFAR_RACE = "cifar resnet20"


# ---------------------------------------------------------------------------------------------- the file
def test_file_keeps_every_key_8bit_checkpoints_atomic_and_no_pickle(tmp_path):
    generator = torch.Generator().manual_seed(0)
    delta = (torch.rand(3, 32, 32, generator=generator) * 2 - 1) * 8 / 255
    codes, scale = encode_delta_8bit(delta)
    assert codes.dtype == np.uint8 and scale == pytest.approx(float(delta.abs().max()))
    assert float((decode_delta_8bit(codes, scale) - delta).abs().max()) <= scale / 255 + 1e-9
    events = [{"kind": "start", "step": 0, "epoch": 0, "elapsed": 1.0, "total_steps": 2, "random_fooling_ratio": 0.3},
              {"kind": "step", "step": 1, "epoch": 1, "elapsed": 2.0, "grad_cosine": 0.5, "a_measure_of_2027": 7},
              {"kind": "eval", "step": 1, "epoch": 1, "elapsed": 2.5, "fooling_ratio": 0.4},
              {"kind": "step", "step": 2, "epoch": 1, "elapsed": 3.0, "grad_cosine": float("nan")},
              {"kind": "eval", "step": 2, "epoch": 1, "elapsed": 4.0, "fooling_ratio": 0.6}]
    recording = Recording({"title": "synthetic", "seconds": 4.0, "command": "python -m uap_core generate …"}, events,
                          [Checkpoint(1, 2.0, delta, "step"), Checkpoint(2, 4.0, delta, "kept")])
    path = save_recording(recording, tmp_path / "run")
    assert path.name == "run.recording.npz" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    with np.load(path, allow_pickle=False) as archive:  # plain arrays only: no pickle needed to read it
        assert {archive[name].dtype.kind for name in archive.files} <= {"u", "f"}
    loaded = load_recording(path)
    assert loaded.events[1]["a_measure_of_2027"] == 7, "keys unknown to the recorder are kept"
    assert loaded.events[3]["grad_cosine"] is None  # NaN → None, as in an artifact's JSON
    assert loaded.mean_of("grad_cosine") == 0.5 and loaded.final_fooling_ratio == 0.6
    step, kept = loaded.checkpoints
    assert float((step.delta - delta).abs().max()) <= float(delta.abs().max()) / 255 + 1e-9
    assert float((kept.delta - delta).abs().max()) <= 8 / 255 * 2 ** -10
    # replay: the events shown follow the recorded time; at the end all of them and the kept δ
    assert [len(loaded.events_until(t)) for t in (0.0, 2.0, 2.5, 3.9, 4.0)] == [1, 2, 3, 4, 5]
    assert loaded.checkpoint_at(1.0) is None and loaded.checkpoint_at(2.0).kind == "step"
    assert loaded.checkpoint_at(4.0).kind == "kept"
    assert replay_seconds(0.5, 4.0, start_at=1.0, duration=4.0) == 3.0 and replay_seconds(9, 100, 0, 4.0) == 4.0
    clock = iter(range(100))
    frames = list(replay_frames(loaded, speed=1.0, clock=lambda: float(next(clock)), sleep=lambda s: None))
    assert [len(f) for f in frames] == [1, 2, 4, 5]
    assert recording_path(tmp_path / "a b.safetensors") == tmp_path / "a b.recording.npz"


# ---------------------------------------------------------------------------------------------- generate --record
@pytest.fixture(scope="module")
def recorded_cli(tmp_path_factory, cifar_npz):
    """``generate --record`` of a tiny CIFAR-10 ResNet-20 SGD-UAP run (8 steps) into a library folder."""
    from uap_core.__main__ import main

    folder = tmp_path_factory.mktemp("recorded-library")
    argv = ["generate", "--model", "cifar_resnet20", "--algorithm", "sgd_uap", "--eps", "8/255", "--images",
            str(cifar_npz), "--fit", "64", "--holdout", "64", "--epochs", "1", "--batch-size", "8", "--eval-every",
            "2", "--device", "cpu", "--seed", "1", "--out", str(folder), "--name", "tiny run", "--record"]
    assert main(argv) == 0
    return folder


def test_generate_record_writes_the_artifacts_history_and_delta(recorded_cli):
    from uap_core.__main__ import build_parser
    from uap_core.algorithms import get_algorithm
    from uap_core.artifacts import load_uap
    from uap_core.params import parse_params
    from uap_core.run_types import RunConfig

    artifact = load_uap(recorded_cli / "tiny run.safetensors")
    recording = load_recording(recorded_cli / "tiny run.recording.npz")
    assert recording.events == artifact.metadata["history"], "every event of the run, as the artifact has it"
    assert [c.step for c in recording.checkpoints if c.kind == "step"] == [2, 4, 6, 8]
    kept = recording.checkpoints[-1]
    assert kept.kind == "kept" and float((kept.delta - artifact.delta).abs().max()) <= 8 / 255 * 2 ** -10
    meta = recording.meta
    assert meta["machine"]["cores"] >= 1 and meta["machine"]["cpu"] and meta["date"].startswith("20")
    assert meta["seconds"] > 0 and meta["version"]["uap_explorer"]
    assert artifact.metadata["recorded"]["command"] in meta["command"], "the artifact names the same command"
    # the command parses back to the run's settings
    words = shlex.split(meta["command"])
    assert words[:4] == ["python", "-m", "uap_core", "generate"] and "--record" in words
    args = build_parser().parse_args(words[3:])
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if hasattr(args, f.name)}
    rebuilt = RunConfig(**{k: v for k, v in settings.items() if k not in ("stream", "workers")},
                        params={"batch_size": args.param_batch_size}).validated()
    recorded = RunConfig(**{k: v for k, v in meta["config"].items() if k not in ("stream", "workers")}).validated()
    for name in ("model", "algorithm", "eps", "norm", "images", "fit", "holdout", "epochs", "seed", "device",
                 "eval_every", "keep"):
        assert getattr(rebuilt, name) == getattr(recorded, name), name
    assert parse_params(get_algorithm("sgd_uap").Params, rebuilt.params).batch_size == 8


# ---------------------------------------------------------------------------------------------- the shipped race
def _role(title: str) -> str:
    """"SGA (B 250, m 10, K 4)" → "SGA"; "SGD-UAP, small batch (B 10)" → "small batch"."""
    return title.split(" (")[0].split(", ")[-1]


@pytest.fixture(scope="module")
def shipped_race() -> dict[str, Recording]:
    grouped = races(list_recordings(SHIPPED))
    assert CIFAR_RACE in grouped, f"no shipped race {CIFAR_RACE!r}: run python assets/make_recordings.py"
    return {_role(r.title): r for r in grouped[CIFAR_RACE]}


def test_shipped_race_shows_the_papers_finding(shipped_race):
    assert set(shipped_race) == {"SGA", "large batch", "small batch"}, list(shipped_race)
    sga, large, small = shipped_race["SGA"], shipped_race["large batch"], shipped_race["small batch"]
    # the stability the SGA paper is about: aggregated small-batch gradients agree from step to step
    assert sga.mean_of("grad_cosine") > small.mean_of("grad_cosine")
    # and generalise better: the last held-out point of SGA above both SGD-UAPs'
    assert sga.final_fooling_ratio > large.final_fooling_ratio
    assert sga.final_fooling_ratio > small.final_fooling_ratio
    for recording in shipped_race.values():
        assert recording.path.stat().st_size < 1_000_000
        assert recording.final_fooling_ratio > recording.start["random_fooling_ratio"]
        words = shlex.split(recording.meta["command"])
        assert words[:4] == ["python", "-m", "uap_core", "generate"] and words[words.index("--epochs") + 1] == "5"
        assert recording.meta["machine"]["cpu"] and recording.meta["date"] and recording.meta["scale"]


# ---------------------------------------------------------------------------------------------- the pages
def _last_points(at) -> list[float]:
    """The last point of each run's trace on the replay's held-out fooling ratio chart (the page's last one)."""
    specs = [s for s in plotly_specs(at) if "Held-out fooling ratio" in str(s.get("layout", {}).get("title"))]
    assert specs, "no held-out fooling ratio chart"
    return [t["y"][-1] for t in specs[-1]["data"] if t.get("showlegend", True)]


def _labelled(at, recordings: list[Recording]) -> None:
    """The replay says: recorded, machine, when, how long, and the command of every run."""
    note = next(i.value for i in at.info if "Recorded run — not live" in i.value)
    first = recordings[0].describe()
    assert first["machine"] in note and first["date"] in note and first["duration"] in note
    code = "\n".join(c.value for c in at.code)
    for recording in recordings:
        assert recording.meta["command"] in code


def _scrub_to_end(at, key: str) -> None:
    slider = at.slider(key=f"{key}_pos")
    slider.set_value(slider.max).run()
    assert not at.exception


def test_replay_labelled_and_scrubbed_to_the_recorded_values_on_home_race_and_library(
        recorded_cli, shipped_race, monkeypatch, tmp_path):
    monkeypatch.setenv("UAP_SHIPPED_DIR", str(tmp_path / "no-zoo"))
    monkeypatch.setenv("UAP_LIBRARY_DIR", str(recorded_cli))
    race = list(races(list_recordings(SHIPPED)).values())[0]
    for page, key in (("home", "home_replay"), ("generate", "gen_replay")):
        at = AppTest.from_file(str(PAGES[page]), default_timeout=120).run()
        assert not at.exception
        at.toggle(key=f"{key}_on").set_value(True).run()
        assert not at.exception
        _labelled(at, race)
        if page == "home":  # Play, then Pause: the point moves on at the chosen speed and the slider stays there
            at.selectbox(key=f"{key}_speed").set_value(100.0).run()
            at.button(key=f"{key}_play").click().run()
            assert at.button(key=f"{key}_play").label == "Pause" and at.get("progress")
            time.sleep(0.5)
            at.button(key=f"{key}_play").click().run()
            assert at.button(key=f"{key}_play").label == "Play"
            assert 40 <= at.slider(key=f"{key}_pos").value < race[0].seconds
        _scrub_to_end(at, key)
        assert _last_points(at) == pytest.approx([r.final_fooling_ratio for r in race])
        assert sum("**recorded**" in m.value for m in at.markdown) == len(race)

    at = AppTest.from_file(str(PAGES["library"]), default_timeout=120).run()
    assert at.selectbox(key="lib_entry").value == "tiny run"
    at.toggle(key="lib_replay_on").set_value(True).run()
    assert not at.exception
    recording = load_recording(recorded_cli / "tiny run.recording.npz")
    _labelled(at, [recording])
    _scrub_to_end(at, "lib_replay")
    assert _last_points(at)[-1] == pytest.approx(recording.final_fooling_ratio)
    assert math.isfinite(_last_points(at)[-1])
    assert json.loads(json.dumps(recording.events))  # the events are plain JSON
