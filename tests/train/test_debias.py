"""--debias source: conditional source-adversarial training. The gradient reversal, the adversary's
per-class heads, the log of its accuracy, and one clear line where there is no source to remove."""

import numpy as np
import pytest
import torch

from covidnet.checkpoint import read_checkpoint
from covidnet.errors import ConfigError
from covidnet.tasks.debias import GradReverse, SourceAdversary, adversary_loss, source_targets
from covidnet.train import TrainConfig, train


def test_gradient_reversal_is_identity_forward_and_minus_weight_backward():
    x = torch.randn(4, 3, requires_grad=True)
    y = GradReverse.apply(x, 0.5)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -0.5))


def test_each_image_is_judged_by_its_own_class_head():
    adv = SourceAdversary(num_features=2, num_classes=3, num_sources=2)
    with torch.no_grad():
        adv.heads.weight.zero_()
        adv.heads.bias.copy_(torch.tensor([1.0, 0, 0, 2.0, 5.0, 5.0]))  # class 0 says source 0, class 1 source 1
    out = adv(torch.zeros(3, 2), torch.tensor([0, 1, 2]))
    assert out.argmax(1).tolist()[:2] == [0, 1] and torch.equal(out[2], torch.tensor([5.0, 5.0]))
    loss, correct, n = adversary_loss(out, torch.tensor([0, 1, 0]), torch.tensor([0.5, 0.5, 0.0]))
    assert float(correct) == 1.0 and float(n) == 1.0 and float(loss.detach()) < 0.7


def test_only_classes_from_several_sources_take_part_each_source_weighing_the_same():
    labels = np.array([0, 0, 2, 2, 2])
    index, weight, names = source_targets(["nih", "cohen", "cohen", "cohen", "figure1"], labels)
    assert names == ["cohen", "figure1", "nih"] and index.tolist() == [2, 0, 0, 0, 1]
    assert weight.tolist() == pytest.approx([1, 1, 0.5, 0.5, 1])  # COVID-19: cohen's two images weigh one
    _, weight, _ = source_targets(["nih", "cohen", "cohen", "cohen", "cohen"], labels)
    assert weight.tolist() == [1, 1, 0, 0, 0]  # COVID-19 comes from cohen alone here: it takes no part
    with pytest.raises(ConfigError, match="--debias source needs a class that comes from two or more sources"):
        source_targets(["nih", "nih", "cohen", "cohen", "cohen"], labels)


def test_a_rare_source_counts_as_much_as_a_common_one_in_the_adversarys_loss():
    """Nine images of one source and one of another, in one class: the adversary that calls every image
    the common source is right on 90 % of the images but on half of the sources, and its loss is that of
    chance on the rare one weighed as much as the nine together."""
    labels = np.zeros(10, dtype=np.int64)
    index, weight, _ = source_targets(["a"] * 9 + ["b"], labels)
    logits = torch.tensor([[4.0, 0.0]] * 10)  # always "a"
    loss, correct, n = adversary_loss(logits, torch.from_numpy(index), torch.from_numpy(weight))
    assert float(correct / n) == pytest.approx(0.5)
    ce = torch.nn.functional.cross_entropy(logits[:2], torch.tensor([0, 1]), reduction="none")
    assert float(loss) == pytest.approx(float(ce.mean()))


def test_over_an_epoch_of_batches_the_rare_source_keeps_its_weight():
    """The same ten images in five batches of two, the rare source's one image in the last: scaled by the
    epoch's mean weight per image, the batches' losses add up to the balanced loss over the epoch; each batch's
    own weighted mean gives the common source four batches to itself and counts the rare image at about a
    third of its weight."""
    labels = np.zeros(10, dtype=np.int64)
    index, weight, _ = source_targets(["a"] * 9 + ["b"], labels)
    logits = torch.tensor([[4.0, 0.0]] * 10)  # always "a"
    sources, weight = torch.from_numpy(index), torch.from_numpy(weight)
    ce = torch.nn.functional.cross_entropy(logits[[0, 9]], torch.tensor([0, 1]), reduction="none")
    balanced = float(ce.mean())  # each source's images weigh the same
    batches = [slice(k, k + 2) for k in range(0, 10, 2)]
    per_image = float(weight.mean())
    scaled = sum(float(adversary_loss(logits[b], sources[b], weight[b], per_image)[0]) for b in batches) / 5
    own_mean = sum(float(adversary_loss(logits[b], sources[b], weight[b])[0]) for b in batches) / 5
    assert scaled == pytest.approx(balanced)
    assert own_mean < balanced / 2


@pytest.mark.slow
def test_debiased_training_logs_the_adversary_and_keeps_the_classifier_alone(tmp_path):
    from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
    from covidnet.data.synth import SynthConfig, write_phantom_dataset

    sources = [
        SourceSpec(
            "cohen",
            write_phantom_dataset(tmp_path / f"p{k}", SynthConfig(n=24, seed=k, size=64), progress=False),
            f"site{k}",
        )
        for k in (1, 2)
    ]
    ds = tmp_path / "ds"
    build_dataset(
        BuildConfig(sources=sources, out=ds, size=32, val_fraction=0.2, test_fraction=0.1, workers=1, progress=False)
    )
    out = tmp_path / "run"
    train(
        TrainConfig(
            data=str(ds),
            out=str(out),
            epochs=2,
            batch_size=8,
            lr=3e-4,
            device="cpu",
            precise_bn=8,
            progress=False,
            debias="source",
            debias_weight=0.3,
            balance_sources=True,  # with it, the adversary sees both sites of a class equally often
        )
    )
    log = (out / "log.csv").read_text().splitlines()
    assert "train_adversary_acc" in log[0] and len(log) == 3
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["train_config"]["debias"] == "source" and "adversary" in ckpt
    assert ckpt["train_config"]["balance_sources"] is True
    assert not any(k.startswith("adversary") for k in ckpt["model"])  # eval, predict and export see a classifier


def test_debias_is_for_classification(tmp_path):
    with pytest.raises(ConfigError, match="--debias is not a setting of --task severity"):
        train(TrainConfig(data=str(tmp_path), out=str(tmp_path / "r"), task="severity", debias="source"))
    with pytest.raises(ConfigError, match="--debias-weight above 0"):
        train(TrainConfig(data=str(tmp_path), out=str(tmp_path / "r"), debias="source", debias_weight=0))
