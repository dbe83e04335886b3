"""Shared test helpers (paths to the repo and to the real third-party inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_DUMP = REPO / "demo" / "wiki" / "demo-pages-articles.xml"


def shared_data(*parts: str) -> Path:
    """A path under the real test data folder, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not available: {path} is absent")
    return path


def save_tiny_causal_lm(folder: Path, corpus: list[str]) -> Path:
    """A one-layer GPT-2 with a word-level tokenizer of `corpus`, a few steps fitted to its first sentence (so it
    has a preference to detect), saved with save_pretrained: a real local Hugging Face causal LM, made offline."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    special = ["<unk>", "<pad>", "<bos>", "<eos>"]
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=special))
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(corpus[0], add_special_tokens=False)["input_ids"]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class LoopbackVLM(str):
    """An OpenAI-compatible VLM server on 127.0.0.1 (the string is its base URL): `POST /v1/chat/completions`
    answers `answer`, `GET /v1/models` lists `model`; `requests` keeps what it was sent. A context manager."""

    def __new__(cls, model: str, answer: str) -> "LoopbackVLM":
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        requests: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                self._reply(200, {"choices": [{"message": {"role": "assistant", "content": answer}}]})

            def do_GET(self):
                self._reply(200 if self.path == "/v1/models" else 404, {"object": "list", "data": [{"id": model, "object": "model"}]})

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        url = super().__new__(cls, f"http://127.0.0.1:{server.server_address[1]}")
        url.server, url.requests = server, requests
        url.thread = threading.Thread(target=server.serve_forever, daemon=True)
        url.thread.start()
        return url

    def __enter__(self) -> "LoopbackVLM":
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
