import base64
import io
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from dnd.metrics.ocr import (
    VLM_PROMPT,
    OCRConfig,
    OCRError,
    RapidOCRBackend,
    check_ocr_backend,
    join_in_reading_order,
    make_ocr_backend,
)
from dnd.metrics.rouge import rocr, rouge_l_f
from testdata import LoopbackVLM

LINES = ["Residual quantization keeps", "every feature vector as a", "short stack of shared codes."]
SENTENCE = " ".join(LINES)
OTHER_TEXT = "Paris is the capital and most populous city of France since medieval times."


def render_page(lines: list[str]) -> Image.Image:
    """Black DejaVu Sans text, 32 px, on a white 512×512 canvas with a 20 px margin (the paper's pages)."""
    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), 32)
    page = Image.new("L", (512, 512), 255)
    draw = ImageDraw.Draw(page)
    for row, line in enumerate(lines):
        draw.text((20, 20 + 40 * row), line, fill=0, font=font)
    return page


@pytest.fixture(scope="module")
def page() -> Image.Image:
    return render_page(LINES)


@pytest.fixture(scope="module")
def rapidocr_backend() -> RapidOCRBackend:
    return make_ocr_backend(OCRConfig(backend="rapidocr", threads=1))


def test_rapidocr_reads_rendered_text_and_rocr_is_high(rapidocr_backend, page):
    blank = Image.new("L", (512, 512), 255)
    texts = rapidocr_backend.read([page, blank])
    assert texts[1] == ""
    assert rouge_l_f(texts[0], SENTENCE) >= 0.9, texts[0]
    scores = rocr(texts, [SENTENCE, SENTENCE])
    assert scores["n"] == 2 and scores["per_image"][1] == 0.0
    assert rocr(texts[:1], [OTHER_TEXT])["mean"] <= 0.3


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed (apt-get install tesseract-ocr)")
def test_tesseract_reads_rendered_text(page):
    backend = make_ocr_backend(OCRConfig(backend="tesseract"))
    (text,) = backend.read([page])
    assert rouge_l_f(text, SENTENCE) >= 0.9, text


def test_missing_tesseract_names_the_setting():
    with pytest.raises(OCRError, match="tesseract_cmd"):
        make_ocr_backend(OCRConfig(backend="tesseract", tesseract_cmd="no-such-tesseract-binary"))


def test_reading_order_groups_lines_then_left_to_right():
    def box(x0, y0, x1, y1):
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]

    # Detector order is scrambled; the second line's right box sits slightly higher than its left box.
    boxes = np.array([box(300, 62, 400, 98), box(10, 10, 200, 50), box(10, 60, 250, 100), box(220, 12, 400, 48)])
    texts = ["line2-right", "line1-left", "line2-left", "line1-right"]
    assert join_in_reading_order(boxes, texts) == "line1-left line1-right line2-left line2-right"
    assert join_in_reading_order(np.zeros((0, 4, 2)), []) == ""


def test_rouge_handles_empty_strings():
    assert rouge_l_f("", SENTENCE) == 0.0
    assert rouge_l_f(SENTENCE, "   ") == 0.0
    assert rouge_l_f(SENTENCE, SENTENCE) == pytest.approx(1.0)
    # Stemming, as the authors score: inflections of the same words still match.
    assert rouge_l_f("the codes quantized", "the code quantizes") == pytest.approx(1.0)


@pytest.fixture
def fake_vlm_server():
    with LoopbackVLM(model="qwen2-vl-test", answer="Residual quantization keeps\nevery feature vector") as server:
        yield server


def test_vlm_backend_sends_the_authors_prompt_greedily(fake_vlm_server, page, monkeypatch):
    monkeypatch.setenv("TEST_VLM_KEY", "secret-token")
    cfg = OCRConfig(
        backend="vlm", vlm_url=fake_vlm_server, vlm_model="qwen2-vl-test", vlm_api_key_env="TEST_VLM_KEY",
        vlm_max_tokens=64,
    )
    texts = make_ocr_backend(cfg).read([page, page])
    assert texts == ["Residual quantization keeps every feature vector"] * 2

    assert len(fake_vlm_server.requests) == 2
    request = fake_vlm_server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer secret-token"
    body = request["body"]
    assert body["model"] == "qwen2-vl-test" and body["temperature"] == 0 and body["max_tokens"] == 64
    parts = {part["type"]: part for part in body["messages"][0]["content"]}
    assert parts["text"]["text"] == VLM_PROMPT
    prefix = "data:image/png;base64,"
    url = parts["image_url"]["image_url"]["url"]
    assert url.startswith(prefix)
    sent = Image.open(io.BytesIO(base64.b64decode(url[len(prefix):])))
    assert sent.format == "PNG" and sent.size == page.size


def test_vlm_backend_error_names_the_endpoint():
    backend = make_ocr_backend(OCRConfig(backend="vlm", vlm_url="http://127.0.0.1:9", vlm_retries=1))
    backend.backoff_s = 0.01
    with pytest.raises(OCRError, match=r"127\.0\.0\.1:9/v1/chat/completions"):
        backend.read([Image.new("L", (8, 8), 255)])


def test_vlm_backend_needs_its_url_and_key():
    with pytest.raises(OCRError, match="vlm_url"):
        make_ocr_backend(OCRConfig(backend="vlm"))
    with pytest.raises(OCRError, match="DND_NO_SUCH_KEY"):
        make_ocr_backend(OCRConfig(backend="vlm", vlm_url="http://127.0.0.1:9", vlm_api_key_env="DND_NO_SUCH_KEY"))


def test_a_stage_checks_its_vlm_endpoint_before_any_work(fake_vlm_server):
    """Pre-flight: the server answers from this host and serves the model; else one error naming the setting."""
    check_ocr_backend(OCRConfig(backend="vlm", vlm_url=fake_vlm_server, vlm_model="qwen2-vl-test"), "richtext.ocr")
    check_ocr_backend(OCRConfig(backend="rapidocr"), "metrics.ocr")  # nothing to reach
    with pytest.raises(OCRError, match=r"^richtext\.ocr\.vlm_model: 'other-model' is not served .*qwen2-vl-test"):
        check_ocr_backend(OCRConfig(backend="vlm", vlm_url=fake_vlm_server, vlm_model="other-model"), "richtext.ocr")
    with pytest.raises(OCRError, match=r"^metrics\.ocr\.vlm_url: the VLM server at http://127\.0\.0\.1:9/v1/models does not answer"):
        check_ocr_backend(OCRConfig(backend="vlm", vlm_url="http://127.0.0.1:9", vlm_timeout_s=5), "metrics.ocr")
