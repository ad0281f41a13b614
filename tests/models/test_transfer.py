"""Transfer learning: torchvision classifiers load with identical logits, class rows are reused
by name, freezing stops gradients and BN statistics, and parameter groups carry their LRs."""

import pytest
import torch

from cvkit.config import load_config
from cvkit.engine.optim import build_optimizer
from cvkit.errors import CheckpointError, ConfigError
from cvkit.models.build import build_model
from cvkit.models.transfer import class_row_mapping, load_pretrained, prepare_finetuning

torch.set_num_threads(2)


def classifier(backbone, num_classes, *overrides):
    config = load_config(None, ["model.name=classifier", f"model.backbone={backbone}", *overrides])
    return build_model(config, num_classes), config


# ResNet-50's body is compared stage by stage in test_backbones.py; its head is ResNet-18's.
@pytest.mark.parametrize("name", ["resnet18", "vgg16", "alexnet", "googlenet"])
def test_torchvision_classifier_file_gives_identical_logits(name, torchvision_file):
    reference, path = torchvision_file(name, num_classes=10)
    model, _ = classifier(name, 10, "model.classifier.head=native")
    classes = [f"class{i}" for i in range(10)]
    report = load_pretrained(
        model.eval(), path, classes, reuse_classes=True, source_classes=classes
    )
    assert report.reused_classes == {c: c for c in classes} and not report.skipped_head
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(image), reference(image), rtol=0, atol=0)


def _source_checkpoint(tmp_path, classes, backbone="vgg11_bn_tiny"):
    source, _ = classifier(backbone, len(classes), "model.classifier.head=native")
    path = tmp_path / "source.pt"
    torch.save({"model": source.state_dict(), "classes": classes, "epoch": 3}, path)
    return source, path


def test_class_rows_are_reused_by_name_and_map(tmp_path):
    torch.manual_seed(0)
    source, path = _source_checkpoint(tmp_path, ["circle", "square", "triangle"])
    target, _ = classifier("vgg11_bn_tiny", 3, "model.classifier.head=native")
    fresh = target.head.classifier[-1].weight.detach().clone()
    report = load_pretrained(
        target, path, ["square", "star", "circle"], reuse_classes=True, class_map={}
    )
    src_out, out = source.head.classifier[-1], target.head.classifier[-1]
    assert report.reused_classes == {"square": "square", "circle": "circle"}
    torch.testing.assert_close(out.weight[0], src_out.weight[1])
    torch.testing.assert_close(out.bias[2], src_out.bias[0])
    torch.testing.assert_close(out.weight[1], fresh[1])  # 'star' is new: left as initialized
    # Hidden head layers and the whole backbone are copied.
    torch.testing.assert_close(target.head.classifier[0].weight, source.head.classifier[0].weight)
    for (key, value), ref in zip(
        target.backbone.state_dict().items(), source.backbone.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, ref, msg=key)
    mapped = load_pretrained(
        target, path, ["square", "star", "circle"], True, class_map={"star": "triangle"}
    )
    assert mapped.reused_classes["star"] == "triangle"
    torch.testing.assert_close(out.weight[1], src_out.weight[2])


def test_output_layer_is_reinitialized_without_reuse(tmp_path):
    torch.manual_seed(0)
    source, path = _source_checkpoint(tmp_path, ["a", "b", "c"])
    target, _ = classifier("vgg11_bn_tiny", 3, "model.classifier.head=native")
    before = target.head.classifier[-1].weight.detach().clone()
    report = load_pretrained(target, path, ["a", "b", "c"])
    assert not report.reused_classes
    torch.testing.assert_close(target.head.classifier[-1].weight, before)
    assert not torch.equal(before, source.head.classifier[-1].weight)


def test_class_row_mapping_and_errors(torchvision_file):
    assert class_row_mapping(["a", "b"], ["b", "x", "a"]) == {0: 1, 2: 0}
    assert class_row_mapping(["a", "b"], ["x"], {"x": "b"}) == {0: 1}
    with pytest.raises(ConfigError, match="class_map"):
        class_row_mapping(["a"], ["x"], {"y": "a"})
    _, path = torchvision_file("resnet18", num_classes=4)
    model, _ = classifier("resnet18", 2)
    with pytest.raises(ConfigError, match="source_classes"):
        load_pretrained(model, path, ["a", "b"], reuse_classes=True)
    other, _ = classifier("resnet34_tiny", 2)
    with pytest.raises(CheckpointError, match=r"resnet18\.pth"):
        load_pretrained(other, path, ["a", "b"])


def test_freezing_stops_gradients_and_statistics():
    torch.manual_seed(0)
    model, config = classifier("resnet18_tiny", 3, "model.freeze_at=2", "train.lr=0.1")
    model.train()
    frozen = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1"))
    }
    trained = model.backbone.layer2[0].conv1.weight.detach().clone()
    optimizer = build_optimizer(model, config.train)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(
            model(torch.randn(4, 3, 64, 64)), torch.arange(4) % 3
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.backbone.layer1[0].conv1.weight.grad is None
    assert model.backbone.bn1.training is False and model.backbone.layer2.training is True
    for key, value in frozen.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert not torch.equal(model.backbone.layer2[0].conv1.weight, trained)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) not in optimized for p in model.backbone.layer1.parameters())


def test_parameter_groups_carry_the_configured_learning_rates():
    model, config = classifier(
        "resnet18_tiny", 3, "train.lr=0.2", "model.body_lr_mult=0.1", "model.head_lr_mult=2"
    )
    optimizer = build_optimizer(model, config.train)
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == pytest.approx({"body": 0.02, "head": 0.4})
    head_ids = {id(p) for p in model.head.parameters()}
    (head_group,) = [g for g in optimizer.param_groups if g["name"] == "head"]
    assert {id(p) for p in head_group["params"]} == head_ids


def test_prepare_finetuning_applies_config_keys(tmp_path):
    torch.manual_seed(0)
    source, path = _source_checkpoint(tmp_path, ["x", "y"], backbone="resnet18_tiny")
    names = tmp_path / "names.txt"
    names.write_text("x\ny\n")
    model, config = classifier(
        "resnet18_tiny",
        2,
        "model.classifier.head=native",
        f"model.pretrained={path}",
        f"model.source_classes={names}",
        "model.reuse_classes=true",
        "model.freeze_at=5",
    )
    report = prepare_finetuning(model, config.model, ["y", "x"])
    assert report.reused_classes == {"y": "y", "x": "x"}
    torch.testing.assert_close(model.head.fc.weight, source.head.fc.weight.flip(0))
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_cvkit_checkpoint_with_ema_gives_the_ema_weights(tmp_path):
    from cvkit.models.backbones.weights import read_weights

    raw = {"w": torch.zeros(2)}
    averaged = {"w": torch.ones(2)}
    path = tmp_path / "last.pt"
    torch.save({"model": raw, "ema": {"module": averaged}, "classes": ["a", "b"]}, path)
    state, classes = read_weights(path)
    assert torch.equal(state["w"], averaged["w"]) and classes == ["a", "b"]
    torch.save({"model": raw, "ema": None, "classes": ["a"]}, path)
    assert torch.equal(read_weights(path)[0]["w"], raw["w"])
