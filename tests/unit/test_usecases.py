import pytest

from sparsify.errors import UseCaseError
from sparsify.usecases import ALIASES, USE_CASES, normalize_name, resolve_use_case

EXPECTED = {
    "image_classification": ["cv-classification", "image_classification", "image-classification",
                             "Image-Classification", "IC", "classification", "image classification"],
    "object_detection": ["cv-detection", "object_detection", "detection", "od", "yolo", "YOLO"],
    "segmentation": ["cv-segmentation", "segmentation", "image_segmentation", "Image Segmentation"],
    "question_answering": ["nlp-question_answering", "question_answering", "qa", "QA",
                           "question-answering"],
    "text_classification": ["nlp-text_classification", "text_classification", "glue", "GLUE"],
    "sentiment_analysis": ["nlp-sentiment_analysis", "sentiment_analysis", "sentiment"],
    "token_classification": ["nlp-token_classification", "token_classification",
                             "token-classification"],
    "named_entity_recognition": ["nlp-named_entity_recognition", "named_entity_recognition",
                                 "ner", "NER", "named entity recognition"],
}


@pytest.mark.parametrize("canonical,alias", [(c, a) for c, al in EXPECTED.items() for a in al])
def test_alias_resolves(canonical, alias):
    assert resolve_use_case(alias).id == canonical


def test_every_declared_alias_resolves_to_its_owner():
    for uc in USE_CASES:
        for alias in (uc.id, uc.sparsify_name, *uc.aliases):
            assert resolve_use_case(alias) is uc
            assert resolve_use_case(alias.upper().replace("_", " ")) is uc


def test_eight_documented_use_cases():
    assert sorted(uc.sparsify_name for uc in USE_CASES) == sorted(
        ["cv-classification", "cv-detection", "cv-segmentation", "nlp-question_answering",
         "nlp-text_classification", "nlp-sentiment_analysis", "nlp-token_classification",
         "nlp-named_entity_recognition"])


def test_normalize():
    assert normalize_name("  Image--Classification ") == "image_classification"
    assert normalize_name("nlp-question_answering") == "nlp_question_answering"
    assert "qa" in ALIASES


def test_unknown_use_case_suggests_and_lists():
    with pytest.raises(UseCaseError) as info:
        resolve_use_case("imagecls")
    message = str(info.value)
    assert "Unknown use case 'imagecls'" in message
    assert "Did you mean 'image_classification'?" in message
    assert "question_answering" in message and "named_entity_recognition" in message
    assert info.value.exit_code == 2


def test_empty_use_case():
    with pytest.raises(UseCaseError):
        resolve_use_case("")
