"""OCR behind one interface: read the text of images as plain strings.

Three backends, chosen by `OCRConfig.backend`:
- `rapidocr` (default): PP-OCR detection + recognition ONNX models shipped inside the `rapidocr`
  package, run by onnxruntime on CPU; works offline.
- `tesseract`: the `tesseract` command-line program (Debian package `tesseract-ocr`).
- `vlm`: a vision-language model served behind an OpenAI-compatible HTTP endpoint (e.g. vLLM serving
  Qwen2-VL-72B-Instruct, the paper's OCR model), prompted as in the authors' code, greedy decoding.

Every backend returns one string per image with words separated by single spaces, so ROUGE-L
compares words and not line breaks.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

# The authors' rOCR prompt (their code asks Qwen2-VL-72B exactly this, greedy decoding).
VLM_PROMPT = "What is the text in the image? Your answer should exactly be the text in the image."


class OCRError(RuntimeError):
    """An OCR backend cannot run (missing program, unreachable endpoint, bad answer)."""


class OCRBackend(Protocol):
    name: str

    def read(self, images: list[Image.Image]) -> list[str]:
        """The text of each image, words joined by single spaces ("" when nothing is read)."""
        ...


@dataclass
class OCRConfig:
    backend: str = "rapidocr"  # rapidocr | tesseract | vlm
    threads: int = 1  # CPU threads per OCR call (onnxruntime intra-op threads, tesseract's OpenMP)
    # rapidocr
    min_text_score: float = 0.5  # drop recognised lines with a lower confidence
    # the text detector scales the image's shorter side to this many pixels (RapidOCR's Det.limit_side_len,
    # limit_type min); 736 suits pages, a 64 px line image reads as well at 128 and ~13x faster on CPU
    det_side: int = 736
    # tesseract
    tesseract_cmd: str = "tesseract"  # program name or path
    tesseract_lang: str = "eng"  # traineddata to use (`-l`)
    # vlm: an OpenAI-compatible server, e.g. `vllm serve Qwen/Qwen2-VL-72B-Instruct`
    vlm_url: str | None = None  # base URL such as http://gpu-node:8000 (/v1/chat/completions is appended)
    vlm_model: str = "Qwen/Qwen2-VL-72B-Instruct"  # the served model name
    vlm_api_key_env: str | None = None  # name of the environment variable holding the API key, if any
    vlm_max_tokens: int = 512  # a 100-word page is ~150 tokens; arXiv pages need more (the authors: 1024)
    vlm_timeout_s: float = 300.0  # per request
    vlm_retries: int = 3  # extra attempts after a failed request, with exponential backoff
    vlm_parallel_requests: int = 8  # requests in flight at once (the server batches them)


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


def join_in_reading_order(boxes: np.ndarray, texts: Sequence[str], line_tolerance: float = 0.5) -> str:
    """Join detected text boxes line by line, each line left to right.

    boxes: (K, 4, 2) corner points (x, y). Boxes whose vertical centres lie within `line_tolerance`
    times the line's median box height of the line's centre belong to that line.
    """
    if len(texts) == 0:
        return ""
    boxes = np.asarray(boxes, dtype=np.float64)
    centers_y = boxes[:, :, 1].mean(axis=1)  # (K,)
    heights = boxes[:, :, 1].max(axis=1) - boxes[:, :, 1].min(axis=1)  # (K,)
    lefts = boxes[:, :, 0].min(axis=1)  # (K,)

    lines: list[list[int]] = []
    for index in np.argsort(centers_y, kind="stable"):
        if lines:
            line = lines[-1]
            line_center = float(np.mean(centers_y[line]))
            line_height = float(np.median(heights[line]))
            if abs(centers_y[index] - line_center) <= line_tolerance * line_height:
                line.append(int(index))
                continue
        lines.append([int(index)])

    ordered = [texts[i] for line in lines for i in sorted(line, key=lambda i: lefts[i])]
    return normalize_whitespace(" ".join(ordered))


class RapidOCRBackend:
    """PP-OCR (detection + recognition) from the `rapidocr` package, on onnxruntime."""

    name = "rapidocr"

    def __init__(self, threads: int = 1, min_text_score: float = 0.5, det_side: int = 736):
        import rapidocr  # imported here: only this backend needs it
        from rapidocr import RapidOCR

        # Point every model at the files shipped inside the package, so nothing is ever fetched.
        model_dir = Path(rapidocr.__file__).resolve().parent / "models"
        det_model = self._single_model(model_dir, "*_det_*.onnx")
        rec_model = self._single_model(model_dir, "*_rec_*.onnx")
        self.models = {"det": det_model.name, "rec": rec_model.name}
        self.engine = RapidOCR(
            params={
                "Global.log_level": "warning",
                "Global.text_score": min_text_score,
                # Rendered and generated pages are upright: the 180° classifier would only cost time.
                "Global.use_cls": False,
                "Det.limit_side_len": det_side,
                "Det.model_path": str(det_model),
                "Rec.model_path": str(rec_model),
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )

    @staticmethod
    def _single_model(model_dir: Path, pattern: str) -> Path:
        found = sorted(model_dir.glob(pattern))
        if len(found) != 1:
            raise OCRError(f"expected one model matching {pattern} under {model_dir}, found {found}")
        return found[0]

    def read(self, images: list[Image.Image]) -> list[str]:
        return [self._read_one(image) for image in images]

    def _read_one(self, image: Image.Image) -> str:
        result = self.engine(np.asarray(image.convert("RGB")))
        texts = getattr(result, "txts", None)
        if not texts:
            return ""
        return join_in_reading_order(result.boxes, texts)


class TesseractBackend:
    """The `tesseract` program, one subprocess per image, page read as one uniform block (`--psm 6`)."""

    name = "tesseract"

    def __init__(self, cmd: str = "tesseract", lang: str = "eng", threads: int = 1):
        executable = shutil.which(cmd)
        if executable is None:
            raise OCRError(
                f"OCR backend 'tesseract' needs the program {cmd!r} (setting tesseract_cmd), which is not on PATH; "
                "install it with `apt-get install tesseract-ocr` or choose another OCR backend"
            )
        self.executable = executable
        self.lang = lang
        self.env = {**os.environ, "OMP_THREAD_LIMIT": str(threads)}

    def read(self, images: list[Image.Image]) -> list[str]:
        return [self._read_one(image) for image in images]

    def _read_one(self, image: Image.Image) -> str:
        completed = subprocess.run(
            [self.executable, "stdin", "stdout", "--psm", "6", "-l", self.lang],
            input=png_bytes(image),
            capture_output=True,
            env=self.env,
            check=False,
        )
        if completed.returncode != 0:
            message = completed.stderr.decode(errors="replace").strip()
            raise OCRError(f"tesseract failed with exit code {completed.returncode}: {message}")
        return normalize_whitespace(completed.stdout.decode("utf-8", errors="replace"))


class VLMBackend:
    """A vision-language model behind an OpenAI-compatible `/v1/chat/completions` endpoint."""

    name = "vlm"

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        max_tokens: int = 512,
        timeout_s: float = 300.0,
        retries: int = 3,
        parallel_requests: int = 8,
        backoff_s: float = 2.0,
    ):
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else f"{base}/v1/chat/completions"
        self.model = model
        self.api_key = api_key
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.retries = retries
        self.parallel_requests = parallel_requests
        self.backoff_s = backoff_s

    def read(self, images: list[Image.Image]) -> list[str]:
        with ThreadPoolExecutor(max_workers=max(1, self.parallel_requests)) as pool:
            return list(pool.map(self._read_one, images))

    def check(self, setting: str, timeout_s: float = 30.0) -> None:
        """Before any work: the server answers `GET /v1/models` from this host and serves `model`. A stage on a
        compute node cannot reach a server on the login node's localhost; this says so in seconds, not hours."""
        models_url = self.endpoint.removesuffix("/chat/completions").removesuffix("/v1") + "/v1/models"
        request = urllib.request.Request(models_url, headers={"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})
        try:
            with urllib.request.urlopen(request, timeout=min(timeout_s, self.timeout_s)) as response:
                served = [entry.get("id") for entry in json.loads(response.read()).get("data", [])]
        except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as error:
            raise OCRError(f"{setting}.vlm_url: the VLM server at {models_url} does not answer from {socket.gethostname()} "
                           f"({error}); serve it where this host reaches it (docs/cluster.md) and set its address") from error
        if served and self.model not in served:
            raise OCRError(f"{setting}.vlm_model: {self.model!r} is not served at {models_url} (it serves {', '.join(map(str, served))})")

    def request_body(self, image: Image.Image) -> dict:
        data_url = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
        return {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url}},
                        {"type": "text", "text": VLM_PROMPT},
                    ],
                }
            ],
            "temperature": 0,  # greedy, as the authors decode
            "max_tokens": self.max_tokens,
        }

    def _read_one(self, image: Image.Image) -> str:
        body = json.dumps(self.request_body(image)).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    answer = json.loads(response.read())
                return normalize_whitespace(answer["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as error:
                last_error = error
                if error.code < 500 and error.code != 429:  # the request itself is wrong: retrying won't help
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                last_error = error
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as error:
                raise OCRError(f"VLM endpoint {self.endpoint} answered without choices[0].message.content") from error
        raise OCRError(
            f"VLM endpoint {self.endpoint} (setting vlm_url, model {self.model!r}) failed after "
            f"{attempt + 1} attempt(s): {last_error}"
        ) from last_error


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def check_ocr_backend(cfg: OCRConfig, setting: str) -> None:
    """A stage's pre-flight: an endpoint-backed OCR (the VLM) must answer before the stage does hours of work.
    `setting`: where the config sets it (metrics.ocr, richtext.ocr), for the error message."""
    if cfg.backend == "vlm":
        backend = make_ocr_backend(cfg)
        backend.check(setting)


def make_ocr_backend(cfg: OCRConfig) -> OCRBackend:
    if cfg.backend == "rapidocr":
        return RapidOCRBackend(threads=cfg.threads, min_text_score=cfg.min_text_score, det_side=cfg.det_side)
    if cfg.backend == "tesseract":
        return TesseractBackend(cmd=cfg.tesseract_cmd, lang=cfg.tesseract_lang, threads=cfg.threads)
    if cfg.backend == "vlm":
        if not cfg.vlm_url:
            raise OCRError("OCR backend 'vlm' needs the setting vlm_url (base URL of an OpenAI-compatible server)")
        api_key = None
        if cfg.vlm_api_key_env:
            api_key = os.environ.get(cfg.vlm_api_key_env)
            if not api_key:
                raise OCRError(f"setting vlm_api_key_env names ${cfg.vlm_api_key_env}, which is unset or empty")
        return VLMBackend(
            url=cfg.vlm_url,
            model=cfg.vlm_model,
            api_key=api_key,
            max_tokens=cfg.vlm_max_tokens,
            timeout_s=cfg.vlm_timeout_s,
            retries=cfg.vlm_retries,
            parallel_requests=cfg.vlm_parallel_requests,
        )
    raise OCRError(f"unknown OCR backend {cfg.backend!r} (setting backend): choose rapidocr, tesseract or vlm")
