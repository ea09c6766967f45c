"""The prunable-layer policy (``__COMPUTE_LAYERS__``) per family: embeddings, classifier, input
conv and depthwise convs stay dense; the rest reaches exactly the target sparsity."""

from __future__ import annotations

import pytest
import torch
import torchvision
import transformers

from sparsify.modifiers.lifecycle import ModifierLifecycle
from sparsify.modifiers.selectors import compute_layer_names, prunable_parameter_names
from sparsify.recipe.parser import load_recipe, parse_recipe

ONE_SHOT = """version: 1.1.0
modifiers:
  - !GMPruningModifier
      params: {params}
      init_sparsity: 0.8
      final_sparsity: 0.8
      start_epoch: 0.0
      end_epoch: 1.0
      update_frequency: 1.0
"""


def _bert(cls):
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=120, num_labels=3)
    return cls(config)


def _prune(model, params="__COMPUTE_LAYERS__"):
    lc = ModifierLifecycle(parse_recipe(ONE_SHOT.format(params=params)), model)
    lc.initialize(torch.optim.SGD(model.parameters(), lr=0.0), 4)
    lc.epoch_start()
    lc.batch_start()
    lc.optim_pre_step()
    lc.optim_post_step()
    lc.batch_end()
    lc.finalize()
    return dict(model.named_parameters())


def _sparsity(p):
    return float((p.detach() == 0).float().mean())


@pytest.mark.parametrize("build, dense", [
    (lambda: torchvision.models.resnet18(num_classes=4), {"conv1.weight", "fc.weight"}),
    (lambda: _bert(transformers.BertForSequenceClassification),
     {"bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
      "bert.embeddings.token_type_embeddings.weight", "bert.pooler.dense.weight",
      "classifier.weight"}),
    (lambda: _bert(transformers.BertForQuestionAnswering),
     {"bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
      "bert.embeddings.token_type_embeddings.weight", "qa_outputs.weight"}),
    (lambda: _bert(transformers.BertForTokenClassification),
     {"bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
      "bert.embeddings.token_type_embeddings.weight", "classifier.weight"}),
])
def test_policy_leaves_lookup_tables_heads_and_stem_dense(build, dense):
    torch.manual_seed(0)
    model = build()
    assert set(prunable_parameter_names(model)) - set(compute_layer_names(model)) == dense
    params = _prune(model)
    for name in prunable_parameter_names(model):
        if name in dense:
            assert _sparsity(params[name]) < 0.01, name
        else:
            assert _sparsity(params[name]) == pytest.approx(0.8, abs=0.01), name


def test_cnn_policy_skips_the_input_conv_and_depthwise_convs():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=4)
    chosen = set(compute_layer_names(model))
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    stem = next(iter(convs))
    depthwise = {f"{n}.weight" for n, m in convs.items() if m.groups > 1}
    assert depthwise and f"{stem}.weight" not in chosen and not depthwise & chosen
    assert "classifier.1.weight" not in chosen
    pointwise = {f"{n}.weight" for n, m in convs.items() if m.groups == 1 and n != stem}
    assert pointwise == chosen
    params = _prune(model)
    for name in depthwise | {f"{stem}.weight", "classifier.1.weight"}:
        assert _sparsity(params[name]) < 0.01, name
    for name in pointwise:
        assert _sparsity(params[name]) == pytest.approx(0.8, abs=0.01), name


def test_all_prunable_keeps_its_sparseml_meaning():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    params = _prune(model, "__ALL_PRUNABLE__")
    assert _sparsity(params["conv1.weight"]) == pytest.approx(0.8, abs=0.01)
    assert _sparsity(params["fc.weight"]) == pytest.approx(0.8, abs=0.01)


@pytest.mark.parametrize("name", ["image_classification_gmp", "nlp_gmp"])
def test_shipped_gradual_recipes_prune_compute_layers_after_gmp_star(name):
    recipe = load_recipe(name, {"target_sparsity": 0.78, "num_epochs": 10})
    gmp = recipe.of_type("GMPruningModifier")[0].build()
    assert gmp.params == "__COMPUTE_LAYERS__"
    assert gmp.init_sparsity == pytest.approx(0.78 * 0.6)  # the initial jump
    quant = recipe.of_type("QuantizationModifier")[0].build()
    assert quant.start_epoch == pytest.approx(6.5)  # the last 35%
    assert quant.disable_quantization_observer_epoch == pytest.approx(9.0)  # 1 before the end
    lrs = [m.build() for m in recipe.of_type("LearningRateFunctionModifier")]
    assert [lr.start_epoch for lr in lrs] == [0.0, 5.0]  # the LR rewinds when pruning ends
    assert lrs[1].init_lr > lrs[0].final_lr
    assert recipe.of_type("DistillationModifier")
    assert recipe.variables["teacher_epochs"] == 10  # as long as the dense fine-tune


@pytest.mark.parametrize("config", ["yolov8n.yaml", "yolov8n-seg.yaml"])
def test_detection_policy_leaves_the_stem_and_the_head_outputs_dense(config, tmp_path,
                                                                     monkeypatch):
    pytest.importorskip("ultralytics")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    from sparsify.trainers.yolo_models import freeze_dfl_

    torch.manual_seed(0)
    model = (SegmentationModel if "seg" in config else DetectionModel)(config, nc=3,
                                                                       verbose=False)
    freeze_dfl_(model)
    head = model.model[-1]
    prefix = f"model.{len(model.model) - 1}"
    outputs = {f"{prefix}.{branch}.{i}.2.weight" for branch in ("cv2", "cv3", "cv4")
               if hasattr(head, branch) for i in range(len(getattr(head, branch)))}
    assert len(outputs) == (9 if "seg" in config else 6)
    chosen = set(compute_layer_names(model))
    dense = set(prunable_parameter_names(model)) - chosen
    assert dense == outputs | {"model.0.conv.weight"}
    assert not any("dfl" in n for n in chosen)
    assert f"{prefix}.cv2.0.0.conv.weight" in chosen  # the head's inner convs are compute
    params = _prune(model)
    for name in dense:
        assert _sparsity(params[name]) < 0.01, name
    for name in chosen:
        assert _sparsity(params[name]) == pytest.approx(0.8, abs=0.01), name


def test_shipped_detection_recipe_prunes_compute_layers():
    recipe = load_recipe("detection_gmp", {"target_sparsity": 0.78})
    assert recipe.of_type("GMPruningModifier")[0].build().params == "__COMPUTE_LAYERS__"
