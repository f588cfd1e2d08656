"""The fooling rate (1 − top-1 accuracy under δ against the true labels, the SGA official evaluation's other
number) beside the fooling ratio (label changed): by hand on a tiny batch, absent with a reason without labels,
in the transfer table, and through a Run on real CIFAR-10 images (the CLI's JSON is checked in test_cli.py)."""

import pytest
import torch

from uap_core.evaluation import summarise

NAMES = [f"c{i}" for i in range(5)]


def test_fooling_rate_by_hand():
    truth = torch.tensor([0, 1, 2, 3, -1])  # the last image has no known label
    clean = torch.tensor([0, 1, 0, 3, 2])  # image 2 is already wrong without δ
    perturbed = torch.tensor([0, 2, 0, 1, 1])
    found = summarise(clean, perturbed, truth, NAMES)
    assert found.fooling_ratio == pytest.approx(3 / 5)  # images 1, 3, 4 change label
    # labelled images 0–3; right under δ: image 0 only → rate 3/4 (image 2 counts: wrong, though unchanged)
    assert found.labelled == 4
    assert found.fooling_rate == pytest.approx(3 / 4)
    assert found.fooling_rate_fields() == {"fooling_rate": pytest.approx(0.75), "labelled_images": 4}
    assert found.clean_accuracy == pytest.approx(3 / 4) and found.fooling_rate_reason is None


def test_no_labels_no_fooling_rate_and_a_reason():
    found = summarise(torch.tensor([0, 1]), torch.tensor([1, 1]), None, NAMES)
    assert found.fooling_ratio == 0.5 and found.fooling_rate is None and found.labelled == 0
    fields = found.fooling_rate_fields()
    assert fields["fooling_rate"] is None and "no true labels" in fields["fooling_rate_reason"]


def test_transfer_table_has_the_fooling_rate_where_labels_exist():
    from uap_core.artifacts import UAPArtifact
    from uap_core.images import ImageSet
    from uap_core.transfer import transfer_matrix

    from toys import toy_model

    model = toy_model()
    pixels = torch.randint(0, 256, (12, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    delta = (torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.4
    with torch.no_grad():
        attacked = model((pixels.float() / 255 + delta).clamp(0, 1)).argmax(1)
    labels = torch.arange(12) % 5
    labels[:3] = -1  # three unlabelled
    uaps = {"d": UAPArtifact(delta, {}, None)}
    matrix = transfer_matrix(uaps, ["toy"], ImageSet(pixels, labels, [str(i) for i in range(12)]), "cpu",
                             models={"toy": model}).as_dict()
    known = labels >= 0
    assert matrix["labelled_images"] == 9
    assert matrix["fooling_rate"][0][0] == pytest.approx(1 - (attacked[known] == labels[known]).float().mean().item())
    unlabelled = transfer_matrix(uaps, ["toy"], ImageSet(pixels, torch.full((12,), -1), [str(i) for i in range(12)]),
                                 "cpu", models={"toy": model}).as_dict()
    assert unlabelled["fooling_rate"] is None and unlabelled["fooling_rate_reason"]


@pytest.mark.slow
def test_a_run_on_cifar_reports_the_fooling_rate_of_its_held_out_images(cifar_npz):
    """SGD-UAP, 4 steps on CIFAR-10 ResNet-20: the summary's fooling rate is 1 − accuracy of the kept δ on the
    held-out images' true labels, recounted here."""
    from uap_core.models import load_model
    from uap_core.run import Run, RunConfig
    from uap_core.transfer import images_for

    model = load_model("cifar_resnet20", "cpu")
    images = images_for(model, str(cifar_npz), limit=200)
    run = Run(RunConfig(model="cifar_resnet20", algorithm="sgd_uap", eps=8 / 255, images=str(cifar_npz), fit=100,
                        holdout=100, seed=0, device="cpu", epochs=1, params={"batch_size": 25}), model=model,
              images=images)
    summary = run.run_to_end().summary()
    held_out = run.holdout_set
    with torch.no_grad():
        attacked = model((held_out.pixels.float() / 255 + run.result.delta).clamp(0, 1)).argmax(1)
    assert summary["labelled_images"] == 100
    assert summary["fooling_rate"] == pytest.approx(1 - (attacked == held_out.labels).float().mean().item(), abs=1e-6)
    assert summary["fooling_rate"] != pytest.approx(summary["fooling_ratio"])  # two different numbers
