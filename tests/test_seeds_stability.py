"""Several seeds (uap_core.seeds) and the stability measures that read at laptop scale (issue 20): the spread and
the band against hand computations, the CLI's --seeds spread, update_mean_cosine and budget_use by definition."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from uap_core import metrics
from uap_core.run import RunConfig
from uap_core.seeds import SeededRuns, band, parse_seeds, spread

def test_spread_by_hand():
    s = spread([0.5, 0.7, 0.6, float("nan")])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.6) and s["min"] == 0.5 and s["max"] == 0.7
    assert s["sd"] == pytest.approx(math.sqrt(((0.1) ** 2 + 0 + (0.1) ** 2) / 2))  # sample s.d.: n − 1
    assert spread([0.3])["sd"] == 0.0 and spread([])["n"] == 0
    assert parse_seeds("0, 1,2") == [0, 1, 2] and parse_seeds("") is None


def test_budget_use_by_definition():
    eps = 8 / 255
    corner = torch.full((3, 4, 4), eps)
    corner[0] *= -1
    assert metrics.budget_use(corner, eps, "linf") == pytest.approx(1.0)
    half = torch.zeros(3, 4, 4)
    half[:, :2] = eps  # half the entries at ±eps, the rest 0: ‖δ‖₂ = eps·√(d/2)
    assert metrics.budget_use(half, eps, "linf") == pytest.approx(math.sqrt(0.5))
    assert metrics.budget_use(torch.ones(3, 4, 4) * 0.01, 0.5, "l2") == pytest.approx(0.01 * math.sqrt(48) / 0.5)


def test_update_mean_cosine_by_definition():
    """cos(sign gₜ, Σ_{s<t} sign g_s) for a sign-step method, nan at the first update."""
    from uap_core.algorithms import AttackSetup, get_algorithm
    from uap_core.params import parse_params

    from toys import toy_model

    cls = get_algorithm("sgd_uap")
    pixels = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    setup = AttackSetup(toy_model(), pixels, torch.zeros(4, dtype=torch.int64), 0.1, "linf", None,
                        torch.Generator().manual_seed(0))
    method = cls(setup, parse_params(cls.Params, {"batch_size": 4}))
    g = [torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    first, second, third = (method.update_statistics(x)["update_mean_cosine"] for x in g)
    assert math.isnan(first)
    assert second == pytest.approx(metrics.cosine(g[1].sign(), g[0].sign()))
    assert third == pytest.approx(metrics.cosine(g[2].sign(), g[0].sign() + g[1].sign()))


@pytest.fixture(scope="module")
def three_seeds(cifar_npz):
    config = RunConfig(model="cifar_resnet20", algorithm="sgd_uap", eps="8/255", images=str(cifar_npz), fit=40,
                       holdout=40, device="cpu", epochs=2, keep="last", eval_every=2, params={"batch_size": 10})
    return SeededRuns(config, [0, 1, 2]).run_to_end()


def test_three_seeds_give_three_histories_and_one_band(three_seeds):
    histories = three_seeds.histories
    assert three_seeds.seeds == [0, 1, 2] and len(histories) == 3
    assert len({json.dumps([e.get("grad_cosine") for e in h], default=str) for h in histories}) == 3  # 3 runs
    for key, kind in (("fooling_ratio", "eval"), ("update_mean_cosine", "step"), ("budget_use", "step")):
        points = band(histories, key, kind)
        steps = sorted({e["step"] for e in histories[0] if e["kind"] == kind and math.isfinite(e[key])})
        assert [p["x"] for p in points] == steps and len(steps) >= 4
        for point in points:  # against a hand computation from the three histories
            values = [next(e[key] for e in h if e["kind"] == kind and e["step"] == point["x"]) for h in histories]
            assert point["mean"] == pytest.approx(sum(values) / 3) and point["n"] == 3
            assert point["min"] == min(values) and point["max"] == max(values)
            assert point["sd"] == pytest.approx(statistics.stdev(values))
    spread_fr = three_seeds.summary()["fooling_ratio"]
    finals = [r.evaluation.fooling_ratio for r in three_seeds.results]
    assert spread_fr["mean"] == pytest.approx(statistics.fmean(finals)) and spread_fr["n"] == 3


def test_cli_seeds_print_the_spread(cifar_npz, tmp_path, capsys):
    from uap_core.__main__ import main

    code = main(["generate", "--model", "cifar_resnet20", "--algorithm", "sgd_uap", "--eps", "8/255", "--images",
                 str(cifar_npz), "--fit", "20", "--holdout", "30", "--device", "cpu", "--epochs", "1",
                 "--batch-size", "10", "--keep", "last", "--seeds", "0,1,2", "--out", str(tmp_path), "--json"])
    done = capsys.readouterr()
    assert code == 0, done.err
    out = json.loads(done.out.strip().splitlines()[-1])
    assert out["seeds"] == [0, 1, 2] and [r["seed"] for r in out["runs"]] == [0, 1, 2]
    finals = [r["fooling_ratio"] for r in out["runs"]]
    assert out["fooling_ratio"]["mean"] == pytest.approx(statistics.fmean(finals))
    assert out["fooling_ratio"]["sd"] == pytest.approx(statistics.stdev(finals))
    assert len({Path(r["artifact"]).name for r in out["runs"]}) == 3


def test_race_protocol_is_declared_once():
    """The race's protocol: the paper's (equal epochs) by default, or equal image-gradients; one declaration gives
    the command line's option and its check (uap_core.presets.RaceSettings)."""
    import dataclasses

    from uap_core.__main__ import build_parser
    from uap_core.errors import ParameterError
    from uap_core.params import parse_params
    from uap_core.presets import RACE_BUDGET, RACE_EPOCHS, RaceSettings, race_config, race_entrant

    paper = race_config("sga", "cpu")
    assert paper.epochs == RACE_EPOCHS and paper.max_image_gradients is None
    fair = race_config("sga", "cpu", protocol="image_gradients")
    assert fair.max_image_gradients == RACE_BUDGET and fair.epochs is None
    assert dataclasses.replace(paper, epochs=None, max_image_gradients=RACE_BUDGET) == fair
    assert race_entrant(fair, "epochs", 2, 99).epochs == 2 and race_entrant(paper, "image_gradients", 2, 99) \
        .max_image_gradients == 99
    assert parse_params(RaceSettings, {}).protocol == "epochs"
    with pytest.raises(ParameterError, match="protocol"):
        parse_params(RaceSettings, {"protocol": "steps"})
    args = build_parser().parse_args(["race", "--protocol", "image_gradients", "--seeds", "0,1"])
    assert args.protocol == "image_gradients" and parse_seeds(args.seeds) == [0, 1]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["race", "--protocol", "steps"])
