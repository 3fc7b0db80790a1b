"""An OpenAI-compatible server for the API-judge and server-backend tests, backed by a local model.

Real HTTP on 127.0.0.1 (stdlib ThreadingHTTPServer, a free port), meant to be used through the real
`openai` SDK:

  POST /v1/chat/completions  the model's chat template applied to `messages`, then greedy generation of
                             up to `max_tokens` tokens; with `logprobs`, every generated token comes with
                             its log-probability and `top_logprobs` alternatives, as OpenAI returns them
  POST /v1/completions       vLLM's completions endpoint (what ipo.judges.server and
                             ipo.selfimprove.server_sampling use): `prompt` as token ids (one list, or a
                             list of lists: one choice each) or text; `max_tokens`, `temperature` (0 =
                             greedy), `top_k` (0/-1: none), `top_p`, `seed`, `n`, `stop_token_ids` (and the
                             EOS) end a choice, which then has finish_reason "stop" and its stop token in
                             `token_ids`, else "length"; `logprobs` K: the legacy logprobs object (tokens,
                             token_logprobs, top_logprobs: K alternatives per generated token, keyed
                             "token_id:N" with `return_tokens_as_token_ids`); `prompt_logprobs` K (vLLM's
                             extension): per prompt position a dict {token id: {"logprob", "rank",
                             "decoded_token"}} holding the prompt's own token and the K most likely, None
                             at position 0; `return_token_ids`: `token_ids` and `prompt_token_ids`.
                             Sampling is vLLM-like per request: one random stream from `seed`, drawn as the
                             project's sampler draws (temperature, top-k, top-p, then Gumbel-max with a CPU
                             generator seeded by `seed`), so a request's sample is a function of its prompt
                             and seed alone. No answer bias here: these are the model's raw log-probabilities.
  GET  /v1/models            the one model served

Errors have OpenAI's shape ({"error": {"message", "type", "code"}}): 401 for a wrong key, 404
`model_not_found` for another model id, 400 for a malformed body. `temperature` is accepted and ignored
(always greedy), which leaves the first token's log-probabilities as they are anyway.

The tiny random test model is not instruction-tuned, so its next-token mass is spread over the whole
vocabulary. Like OpenAI's `logit_bias` parameter, the server adds `answer_bias` to the logit of every
single-token Yes/No variant, so that the answer tokens are among the top log-probabilities as a real
judge's are. The same bias on both sides leaves p_yes / (p_yes + p_no), what the judge reads, unchanged.

Test hooks (thread-safe):
  inject(kind, times, match)  the next `times` requests whose message text contains `match` (any, if None)
                              get a fault: an HTTP status such as "429" (sent with retry-after-ms) or
                              "500"; "stall" (silence for `stall_seconds`, longer than the client's
                              timeout, then the connection is closed); "drop" (the connection is closed
                              at once, without an answer); "garbage" (a 200 with an HTML page)
  canned                      callable(request body) -> None (the model answers) or {"content": text,
                              "top_logprobs": [{"token", "logprob"}, ...] for the first token (default []),
                              "logprobs": False to send none}: exact answers the test controls
  requests / completions      how many (chat-)completion requests arrived / were answered with a 200
  bodies                      every request body received, in order
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ipo.judges.yes_no import NO_VARIANTS, YES_VARIANTS
from ipo.selfimprove.sampling import GumbelMaxSampling


def error_body(message: str, kind: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class OpenAIServer:
    """Serves `model` under the id `model_id`; use as a context manager (start/stop)."""

    def __init__(
        self,
        model,
        tokenizer,
        model_id: str = "tiny-judge",
        api_key: str | None = "test-key",
        answer_bias: float = 8.0,
        stall_seconds: float = 30.0,
        max_prompt_tokens: int = 2048,
        port: int = 0,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.api_key = api_key
        self.stall_seconds = stall_seconds
        self.max_prompt_tokens = max_prompt_tokens
        self.port = port  # 0: a free port
        self.answer_ids = sorted(
            {
                ids[0]
                for v in YES_VARIANTS + NO_VARIANTS
                if len(ids := tokenizer.encode(v, add_special_tokens=False)) == 1
            }
        )
        self.answer_bias = answer_bias
        self.canned: Callable[[dict], dict | None] | None = None
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._release = threading.Event()
        self._faults: list[list] = []
        self.requests = 0
        self.completions = 0
        self.bodies: list[dict] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> OpenAIServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.app = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget faults, canned answers and counters; wake stalled handlers."""
        self._release.set()
        with self._lock:
            self._faults.clear()
            self.canned = None
            self.requests = self.completions = 0
            self.bodies = []
        time.sleep(0.05)  # let woken handlers leave before the next test's requests
        self._release = threading.Event()

    def inject(self, kind: str, times: int = 1, match: str | None = None) -> None:
        with self._lock:
            self._faults.append([str(kind), times, match])

    def _take_fault(self, text: str) -> str | None:
        with self._lock:
            for fault in self._faults:
                kind, times, match = fault
                if times > 0 and (match is None or match in text):
                    fault[1] -= 1
                    return kind
        return None

    # ------------------------------------------------------------------ the model
    def complete(self, body: dict) -> dict:
        """The chat-completion JSON for a valid request body."""
        want_logprobs = bool(body.get("logprobs"))
        top_k = int(body.get("top_logprobs") or 0) if want_logprobs else 0
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        canned = self.canned(body) if self.canned else None
        if canned is not None:
            content = canned["content"]
            top = canned.get("top_logprobs", [])[:top_k]
            entries = [
                {
                    "token": content,
                    "logprob": top[0]["logprob"] if top else 0.0,
                    "bytes": list(content.encode()),
                    "top_logprobs": top,
                }
            ]
            if canned.get("logprobs") is False:
                want_logprobs = False
            prompt_tokens, completion_tokens, finish = 0, 1, "stop"
        else:
            content, entries, prompt_tokens, finish = self._generate(body["messages"], max_tokens, top_k)
            completion_tokens = len(entries)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": {"content": entries} if want_logprobs else None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _entry(self, token_id: int, log_probs, top_k: int) -> dict:
        import torch

        def item(i: int, lp: float) -> dict:
            text = self.tokenizer.decode([i])
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

        values, ids = torch.topk(log_probs, top_k) if top_k else (torch.empty(0), torch.empty(0, dtype=torch.long))
        return {
            **item(token_id, float(log_probs[token_id])),
            "top_logprobs": [item(int(i), float(v)) for v, i in zip(values, ids)],
        }

    def _generate(self, messages: list[dict], max_tokens: int, top_k: int):
        import torch

        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = self.tokenizer(text, add_special_tokens=False).input_ids[-self.max_prompt_tokens :]
        generated, entries = [], []
        with self._model_lock, torch.inference_mode():
            input_ids, past = torch.tensor([prompt]), None
            for _ in range(max_tokens):
                out = self.model(input_ids=input_ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float().clone()
                logits[self.answer_ids] += self.answer_bias
                log_probs = torch.log_softmax(logits, dim=-1)
                token = int(torch.argmax(log_probs))
                generated.append(token)
                entries.append(self._entry(token, log_probs, top_k))
                if token == self.tokenizer.eos_token_id:
                    break
                input_ids = torch.tensor([[token]])
        finish = "stop" if generated and generated[-1] == self.tokenizer.eos_token_id else "length"
        return self.tokenizer.decode(generated, skip_special_tokens=True), entries, len(prompt), finish

    # ------------------------------------------------------------------ /v1/completions (vLLM's)
    def _prompts(self, prompt) -> list[list[int]]:
        if isinstance(prompt, str):
            return [self.tokenizer(prompt).input_ids]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return [list(prompt)]
        if isinstance(prompt, list) and prompt and all(isinstance(p, (list, str)) for p in prompt):
            return [ids for p in prompt for ids in self._prompts(p)]
        raise ValueError("prompt must be text, token ids, or a list of either")

    def _token(self, token_id: int, as_ids: bool) -> str:
        return f"token_id:{token_id}" if as_ids else self.tokenizer.decode([token_id])

    def _prompt_logprobs(self, ids: list[int], k: int) -> list:
        import torch

        with self._model_lock, torch.inference_mode():
            log_probs = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
        entries: list = [None]
        for position in range(1, len(ids)):
            row, token = log_probs[position - 1], ids[position]
            chosen = {token} | (set(torch.topk(row, min(k, row.numel())).indices.tolist()) if k > 0 else set())
            entries.append(
                {
                    str(i): {
                        "logprob": float(row[i]),
                        "rank": int((row > row[i]).sum()) + 1,
                        "decoded_token": self.tokenizer.decode([i]),
                    }
                    for i in sorted(chosen)
                }
            )
        return entries

    def _continue(self, ids: list[int], body: dict, generator_seed: int | None):
        """(new token ids, the legacy logprobs lists, finish_reason) of one choice."""
        import torch
        from transformers.generation.logits_process import (
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        max_tokens = int(body.get("max_tokens") or 16)
        temperature = float(body.get("temperature") if body.get("temperature") is not None else 1.0)
        top_k, top_p = int(body.get("top_k") or 0), float(body.get("top_p") or 1.0)
        k = body.get("logprobs")
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        stops = {self.tokenizer.eos_token_id, *(body.get("stop_token_ids") or [])} - {None}
        processors = []
        if temperature > 0:
            processors.append(TemperatureLogitsWarper(temperature))
            if top_k > 0:
                processors.append(TopKLogitsWarper(top_k))
            if top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p))
            seed = generator_seed if generator_seed is not None else int(torch.randint(0, 2**62, ()).item())
            processors.append(GumbelMaxSampling([seed]))
        tokens, logprobs = [], {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        finish = "length"
        with self._model_lock, torch.inference_mode():
            input_ids, past, sequence = torch.tensor([ids]), None, torch.tensor([ids])
            for _ in range(max_tokens):
                out = self.model(input_ids=input_ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[:, -1, :].float()
                raw = torch.log_softmax(logits[0], dim=-1)
                scores = logits
                for processor in processors:
                    scores = processor(sequence, scores)
                token = int(scores[0].argmax())
                tokens.append(token)
                if k is not None:
                    top = torch.topk(raw, min(int(k), raw.numel())) if int(k) > 0 else None
                    logprobs["tokens"].append(self._token(token, as_ids))
                    logprobs["token_logprobs"].append(float(raw[token]))
                    logprobs["top_logprobs"].append(
                        {self._token(int(i), as_ids): float(v) for v, i in zip(*top)} if top is not None else {}
                    )
                    logprobs["text_offset"].append(0)
                if token in stops:
                    finish = "stop"
                    break
                input_ids = torch.tensor([[token]])
                sequence = torch.cat([sequence, input_ids], dim=-1)
        return tokens, (logprobs if k is not None else None), finish

    def complete_text(self, body: dict) -> dict:
        """The completions JSON for a valid request body (see the module docstring)."""
        prompts = self._prompts(body["prompt"])
        if any(len(ids) > self.max_prompt_tokens for ids in prompts):
            raise ValueError(f"a prompt is longer than {self.max_prompt_tokens} tokens")
        n = int(body.get("n") or 1)
        seed = body.get("seed")
        k_prompt = body.get("prompt_logprobs")
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for p, ids in enumerate(prompts):
            prompt_logprobs = self._prompt_logprobs(ids, int(k_prompt)) if k_prompt is not None else None
            prompt_tokens += len(ids)
            for j in range(n):
                tokens, logprobs, finish = self._continue(ids, body, None if seed is None else int(seed) + j)
                completion_tokens += len(tokens)
                choice = {
                    "index": p * n + j,
                    "text": self.tokenizer.decode(tokens, skip_special_tokens=True),
                    "logprobs": logprobs,
                    "finish_reason": finish,
                    "stop_reason": None,
                }
                if body.get("return_token_ids"):
                    choice.update(token_ids=tokens, prompt_token_ids=ids)
                if prompt_logprobs is not None:
                    choice["prompt_logprobs"] = prompt_logprobs
                choices.append(choice)
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:12]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


class _Handler(BaseHTTPRequestHandler):
    server_version = "ipo-test-openai/1.0"

    def log_message(self, format, *args):  # quiet
        pass

    def _send_json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a stall it timed out on)
            pass

    def do_GET(self):
        app: OpenAIServer = self.server.app
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [{"id": app.model_id, "object": "model", "created": 0, "owned_by": "ipo-tests"}],
                },
            )
        else:
            self._send_json(404, error_body(f"no route {self.path}", "invalid_request_error"))

    def do_POST(self):
        app: OpenAIServer = self.server.app
        route = self.path.rstrip("/")
        if route not in ("/v1/chat/completions", "/v1/completions"):
            self._send_json(404, error_body(f"no route {self.path}", "invalid_request_error"))
            return
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
            if route == "/v1/completions":
                text = json.dumps(body["prompt"])
            else:
                text = "\n".join(str(m.get("content")) for m in body["messages"])
        except (ValueError, KeyError, TypeError, AttributeError):
            self._send_json(400, error_body("malformed request body", "invalid_request_error"))
            return
        with app._lock:
            app.requests += 1
            app.bodies.append(body)
        fault = app._take_fault(text)
        if fault in ("drop", "stall"):
            if fault == "stall":  # the client times out meanwhile; then nothing is answered either
                app._release.wait(app.stall_seconds)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault == "garbage":  # a 200 that is not JSON, like a web page behind a wrong base URL
            data = b"<html><body>Welcome</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if fault is not None:
            status = int(fault)
            headers = {"retry-after-ms": "10", "retry-after": "0"} if status == 429 else {}
            kind = "requests" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
            self._send_json(status, error_body(f"injected fault {status}", kind), headers)
            return
        if app.api_key is not None and self.headers.get("Authorization") != f"Bearer {app.api_key}":
            self._send_json(401, error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
            return
        if body.get("model") != app.model_id:
            self._send_json(
                404,
                error_body(
                    f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                    "invalid_request_error",
                    "model_not_found",
                ),
            )
            return
        try:
            if route == "/v1/chat/completions":
                answer = app.complete(body)
            else:
                try:
                    answer = app.complete_text(body)
                except ValueError as err:  # a prompt the server cannot take: vLLM's 400
                    self._send_json(400, error_body(str(err), "invalid_request_error"))
                    return
        except Exception as err:  # a bug in a test hook or the server: a 500 the test will see
            self._send_json(500, error_body(f"{type(err).__name__}: {err}", "server_error"))
            return
        with app._lock:
            app.completions += 1
        self._send_json(200, answer)


def main(argv=None) -> int:
    """Serve by hand, e.g. to try the API scripts offline:

        python tests/openai_server.py --port 8000                       # the tiny random test model
        python tests/openai_server.py --port 8000 --model_dir "$(python -m ipo.assets smollm2)" --answer_bias 0
        OPENAI_API_KEY=test-key python Preference_Comparison/Reward_Bench/ours_gpt.py \
            --base_url http://127.0.0.1:8000/v1 --model tiny-judge --dataset data/demo_rewardbench.jsonl
    """
    import argparse

    parser = argparse.ArgumentParser(description="An OpenAI-compatible test server on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model_dir", default=None, help="a local model folder; default: the tiny random test model")
    parser.add_argument("--model_id", default="tiny-judge", help="the model id clients must ask for")
    parser.add_argument("--api_key", default="test-key", help="the key clients must send (a test value, not a secret)")
    parser.add_argument(
        "--answer_bias", type=float, default=8.0, help="logit bias on Yes/No tokens (0 for a real judge)"
    )
    args = parser.parse_args(argv)
    if args.model_dir:
        from ipo.modeling import load_model, load_tokenizer

        model, _, _ = load_model(args.model_dir, dtype="float32", device="cpu")
        tokenizer = load_tokenizer(args.model_dir)
    else:
        from helpers import build_model, build_tokenizer

        tokenizer = build_tokenizer()
        model = build_model(tokenizer)
    with OpenAIServer(
        model, tokenizer, model_id=args.model_id, api_key=args.api_key, answer_bias=args.answer_bias, port=args.port
    ) as server:
        print(f"serving {args.model_id} at {server.base_url} (key {args.api_key!r}); Ctrl-C stops", flush=True)
        try:
            while server._thread.is_alive():
                server._thread.join(timeout=1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
