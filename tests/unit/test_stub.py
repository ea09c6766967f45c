import pytest

from sparsify.errors import StubError
from sparsify.zoo.stub import is_stub, parse_stub

LONG = "zoo:cv/classification/resnet_v1-50/pytorch/sparseml/imagenet/pruned95_quant-none"


def test_long_form_fields():
    s = parse_stub(LONG)
    assert s.long_form
    assert (s.domain, s.sub_domain, s.architecture, s.sub_architecture) == (
        "cv", "classification", "resnet_v1", "50")
    assert (s.framework, s.repo, s.dataset, s.training_scheme) == (
        "pytorch", "sparseml", "imagenet", None)
    assert (s.sparse_name, s.sparse_category, s.sparse_target) == ("pruned95_quant", "none", None)
    assert str(s) == LONG


def test_long_form_with_scheme_target_and_query():
    text = ("zoo:nlp/question_answering/bert-base/pytorch/huggingface/squad-augmented/"
            "pruned80_quant-none-vnni?recipe_type=transfer_learn")
    s = parse_stub(text)
    assert s.training_scheme == "augmented" and s.sparse_target == "vnni"
    assert s.recipe_name == "transfer_learn"
    assert str(s) == text
    assert s.without_query == text.split("?")[0]


def test_short_form():
    s = parse_stub("zoo:yolov8-s-coco-pruned55_quantized")
    assert not s.long_form
    assert (s.architecture, s.sub_architecture, s.dataset, s.sparse_name) == (
        "yolov8", "s", "coco", "pruned55_quantized")
    assert str(s) == "zoo:yolov8-s-coco-pruned55_quantized"


def test_multiple_query_params_round_trip():
    text = LONG + "?recipe_type=original&recipe=transfer"
    s = parse_stub(text)
    assert str(s) == text
    assert s.recipe_name == "transfer"


@pytest.mark.parametrize("bad,why", [
    ("cv/classification/x", "must start with 'zoo:'"),
    ("zoo:", "nothing after"),
    ("zoo:a/b/c", "7 '/'-separated parts"),
    ("zoo:resnet-imagenet", "at least architecture-dataset-sparse_tag"),
    ("zoo:cv/classification/../pytorch/sparseml/imagenet/base-none", "component '..'"),
    ("zoo:/etc/passwd/a/b/c/d/e", "relative name"),
    ("zoo:cv/classification/res net/pytorch/sparseml/imagenet/base-none", "component"),
    ("zoo:cv\\classification", "relative name"),
    (LONG + "?recipe_typ=x", "unknown query parameter 'recipe_typ'"),
    (LONG + "?recipe=../../x", "plain name"),
])
def test_malformed_stubs(bad, why):
    with pytest.raises(StubError) as info:
        parse_stub(bad)
    assert why in str(info.value)
    assert "Expected zoo:domain/sub_domain" in info.value.hint
    assert info.value.exit_code == 2


def test_is_stub():
    assert is_stub("ZOO:x") and not is_stub("./zoo:x") and not is_stub("resnet50")
