"""The HTTP side of the API judges and of the server backend: one client for any OpenAI-compatible endpoint.

OpenAI (the default), OpenRouter (the paper's), a local vLLM server, or any server that speaks
``POST /v1/chat/completions`` (``endpoint="chat"``, the API judges) or ``POST /v1/completions``
(``endpoint="completions"``, the server backend of ipo.judges.server and ipo.selfimprove.server_sampling:
token-id prompts, vLLM's extensions such as ``prompt_logprobs`` passed in the body's ``extra_body``). What a request asks and how its answer is read is ipo.judges.api's business;
this module only gets answers, reliably and once.

What the client guarantees (upstream's ``*_gpt.py`` scripts took the key as a required ``--api_key``
argument and turned any failed request into a score of 0):
  * The key is read from an environment variable (OPENAI_API_KEY or ``--api_key_env NAME``), never from
    the command line or a saved file.
  * Our own retries, the only ones (the SDK's are off: ``max_retries=0``): exponential backoff with jitter,
    or the server's Retry-After, on 429, 408/409, 5xx, timeouts, dropped connections and non-JSON answers.
  * Errors that no retry can fix stop the run with one line: a refused key (401), a forbidden or unknown
    model (403/404), an exhausted quota. ``fetch(body, strict=True)`` makes any failure fatal; the API
    judges send their first request that way (ipo.judges.api.ApiScorer.probe), so a wrong key, base URL or
    model id fails in seconds.
  * After that, a request that still fails after all retries, or that the server rejects (400/413/422, e.g.
    a prompt over the model's context), comes back as a Result with its failure kind, never as an answer.
  * Every answered request is appended (and fsynced) to an on-disk cache, keyed by a hash of the base URL
    and the full request body (model, messages, parameters; never the key), so a re-run, a resume or an
    overlapping run never pays twice for the same request.
  * An answer the judge cannot read (``accept`` says no: e.g. a 200 without log-probabilities, or without
    Yes/No among them) is kept for the record in ``<model>.unreadable.jsonl`` beside the cache, served again
    only within this invocation, and asked again by the next run: a failure that may clear, never a cache hit.
  * At most ``max_concurrency`` requests are in flight; results come back in completion order.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipo import IpoError
from ipo.runs import RecordLog

logger = logging.getLogger("ipo")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
MAX_RETRY_DELAY = 60.0  # seconds; a longer Retry-After (e.g. a daily quota) falls back to our backoff

# Failure kinds of a request. Retried: the server or the network may do better next time.
RETRYABLE = frozenset({"rate_limited", "server_error", "timeout", "conflict", "connection", "bad_response"})
# Fatal at any point: no retry and no other request can succeed with this key, model and base URL.
FATAL = frozenset({"unauthorized", "forbidden", "not_found", "quota"})
# The endpoints a client can speak: chat completions (messages) and completions (a text or token-id prompt).
ENDPOINTS = ("chat", "completions")
# Whether the caller can read an answer (ipo.judges.api.ApiScorer.readable); an unreadable one is not cached.
Accept = Callable[[dict], bool]


def read_api_key(env_name: str = DEFAULT_KEY_ENV) -> str:
    """The key from the environment variable ``env_name``; one clear IpoError if it is unset or empty."""
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise IpoError(
            f"no API key: the environment variable {env_name} is not set. Export it (export {env_name}=...; "
            "any value, e.g. EMPTY, for a local server without authentication) or name another variable "
            "with --api_key_env"
        )
    return key


def request_key(base_url: str, body: dict) -> str:
    """Cache key: sha256 of the base URL and the full request body (model included), canonical JSON.

    The base URL is part of it because the same model id on two servers (OpenAI and OpenRouter, or two
    local servers) may answer differently; the API key is not, since it does not change the answer.
    """
    canonical = json.dumps(
        {"base_url": base_url.rstrip("/"), "request": body}, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def first_choice(response: dict | None) -> dict | None:
    """``choices[0]`` of a chat-completions answer, or None when it has none (not an answer at all)."""
    choices = response.get("choices") if isinstance(response, dict) else None
    return choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None


# ---------------------------------------------------------------------------------------------------
# Retries (pure)
# ---------------------------------------------------------------------------------------------------
def parse_retry_after(headers) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms`` (OpenAI's), else ``retry-after`` (seconds or
    an HTTP date); None when absent or unreadable."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            if name == "retry-after":
                parsed = email.utils.parsedate_tz(value)
                if parsed is not None:
                    return email.utils.mktime_tz(parsed) - time.time()
    return None


def retry_delay(
    attempt: int, base_delay: float, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...).

    The server's Retry-After when it gives one between 0 and MAX_RETRY_DELAY; otherwise exponential backoff
    ``base_delay * 2**(attempt-1)``, capped at MAX_RETRY_DELAY, with "equal jitter" (uniform in [d/2, d])
    so that concurrent workers that failed together do not retry in lock-step.
    """
    if retry_after is not None and 0 <= retry_after <= MAX_RETRY_DELAY:
        return retry_after
    delay = min(MAX_RETRY_DELAY, base_delay * 2 ** (attempt - 1))
    return delay * (0.5 + 0.5 * (rng or random).random())


def status_kind(status: int, code: str | None = None) -> str:
    """Failure kind of an HTTP error status (``code``: the error body's code, e.g. insufficient_quota)."""
    if status == 429:
        return "quota" if code == "insufficient_quota" else "rate_limited"
    return {401: "unauthorized", 403: "forbidden", 404: "not_found", 408: "timeout", 409: "conflict"}.get(
        status, "server_error" if status >= 500 else "rejected"
    )


# ---------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------
class ResponseCache:
    """Answered requests of one model, one JSON line each: {"key", "model", "response"}.

    ``<folder>/<model>.jsonl``, appended and fsynced per answer under a lock (workers share it); a line cut
    by a kill is dropped on load (ipo.runs.RecordLog), and a key written again (an answer that replaced an
    unreadable one) keeps its last answer. Created on the first answer, so a run that fails before any answer
    leaves nothing behind. Unreadable answers go to ``<folder>/<model>.unreadable.jsonl`` (``put_unreadable``),
    for the record only: nothing reads them back.
    """

    def __init__(self, folder: str | os.PathLike, model: str):
        self.path = Path(folder) / (re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._") + ".jsonl")
        self.unreadable_path = self.path.with_suffix(".unreadable.jsonl")
        remedy = (
            f"the response cache is damaged: delete {self.path} to start a new one (its answers will be asked, "
            "and paid for, again), or repair that line"
        )
        self._log = RecordLog(self.path, key="key", last_wins=True, remedy=remedy)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._log)

    def get(self, key: str) -> dict | None:
        record = self._log.records.get(key)
        return record["response"] if record else None

    def put(self, key: str, model: str, response: dict) -> None:
        with self._lock:
            self._log.append([{"key": key, "model": model, "response": response}], replace=True)

    def put_unreadable(self, key: str, model: str, response: dict) -> None:
        """Keep an answer the judge could not read, for the record (never served from the cache)."""
        line = json.dumps({"key": key, "model": model, "response": response, "at": time.time()}, ensure_ascii=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.unreadable_path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------------
@dataclass
class Result:
    """The outcome of one request: the response JSON, or the failure kind after all retries."""

    response: dict | None
    failure: str | None = None
    message: str = ""
    cached: bool = False


class ApiClient:
    """Chat completions with our retries, a response cache, bounded concurrency and counters.

    ``stats``: requests_sent (HTTP attempts), answered, cache_hits, retries, errors_by_kind (attempts),
    gave_up_by_kind (requests that failed after all retries or were rejected), prompt_tokens,
    completion_tokens (as the server reported them for the requests sent now).
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str,
        timeout: float = 60.0,
        max_retries: int = 5,
        max_concurrency: int = 8,
        retry_base_delay: float = 1.0,
        cache: ResponseCache | None = None,
        key_env: str = DEFAULT_KEY_ENV,
        endpoint: str = "chat",
        flag_names: dict[str, str] | None = None,
    ):
        try:
            import openai
        except ImportError:
            raise IpoError("the API judges need the openai package: pip install 'openai>=3.54'")
        for name in ("openai", "httpx", "httpx2", "httpcore"):  # their per-request INFO lines flood the log
            logging.getLogger(name).setLevel(logging.WARNING)
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; one of {', '.join(ENDPOINTS)}")
        self._openai = openai
        self.endpoint = endpoint
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.retry_base_delay = retry_base_delay
        self.cache = cache
        self.key_env = key_env
        # the calling script's names for the flags an error tells the user to check (the server backend's
        # --served_model, --server_api_key_env, --server_timeout), by the API scripts' names
        self.flag_names = dict(flag_names or {})
        self._api_key = api_key
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=timeout)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rng = random.Random()
        self._unreadable: dict[str, dict] = {}  # unreadable answers of this invocation: not paid for twice in it
        self.stats: dict[str, Any] = {
            "requests_sent": 0,
            "answered": 0,
            "cache_hits": 0,
            "retries": 0,
            "errors_by_kind": Counter(),
            "gave_up_by_kind": Counter(),
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }

    def describe(self) -> dict:
        """Settings for config.json (never the key)."""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "api_key_env": self.key_env,
            "endpoint": self.endpoint,
            "cache": str(self.cache.path) if self.cache is not None else None,
        }

    def served_models(self) -> list[str]:
        """The model ids ``GET /models`` lists; one IpoError when the server cannot be reached or refuses the key.

        Retried like a request (connection errors, 5xx, 429), so a server that is still starting gets a few
        seconds; what no retry fixes stops at once with the reason."""
        openai = self._openai
        attempt = 0
        while True:
            try:
                return [model.id for model in self.client.models.list().data]
            except openai.APIStatusError as err:
                kind, message = status_kind(err.status_code), f"{err.status_code}: {self._clean(err.message)}"
            except openai.APITimeoutError:
                kind, message = "timeout", f"no answer within {self.timeout:g} s"
            except openai.APIConnectionError as err:
                kind, message = (
                    "connection",
                    self._clean(f"{type(err.__cause__ or err).__name__}: {err.__cause__ or err}"),
                )
            except (openai.OpenAIError, ValueError, AttributeError) as err:  # not an OpenAI-style model list
                kind, message = "bad_response", self._clean(f"{type(err).__name__}: {err}")
            self._count("errors_by_kind", kind)
            if kind in FATAL or kind not in RETRYABLE or attempt >= self.max_retries:
                raise IpoError(
                    f"GET {self.base_url}/models failed after {attempt + 1} attempt(s) ({kind}, {message}); check "
                    "--base_url (it usually ends in /v1), that the server is running, and its API key"
                )
            attempt += 1
            self._count("retries")
            time.sleep(retry_delay(attempt, self.retry_base_delay, rng=self._rng))

    def usage(self) -> dict:
        """``stats`` as plain JSON."""
        with self._lock:
            return {k: dict(v) if isinstance(v, Counter) else v for k, v in self.stats.items()}

    # ------------------------------------------------------------------ one request
    def full_request(self, body: dict) -> tuple[str, dict]:
        full = {"model": self.model, **body}
        return request_key(self.base_url, full), full

    def cached(self, body: dict, accept: Accept | None = None) -> dict | None:
        """The cached response of ``body`` (one ``accept`` takes), without counting or sending anything."""
        return self._lookup(self.full_request(body)[0], accept)

    def fetch(self, body: dict, strict: bool = False, accept: Accept | None = None) -> Result:
        """One request: from the cache, or sent with retries. ``strict``: any failure raises IpoError.
        ``accept(response)``: False for an answer the caller cannot read, which is then not cached (see
        the module's docstring)."""
        key, full = self.full_request(body)
        return self._from_cache(key, accept) or self._send(key, full, strict, accept)

    def _lookup(self, key: str, accept: Accept | None) -> dict | None:
        response = self.cache.get(key) if self.cache is not None else None
        if response is not None and (accept is None or accept(response)):
            return response
        return self._unreadable.get(key)

    def _from_cache(self, key: str, accept: Accept | None) -> Result | None:
        """The cached Result of ``key`` (counted as a cache hit), or None."""
        response = self._lookup(key, accept)
        if response is None:
            return None
        self._count("cache_hits")
        return Result(response, cached=True)

    def _count(self, name: str, kind: str | None = None, amount: int = 1) -> None:
        with self._lock:
            if kind is None:
                self.stats[name] += amount
            else:
                self.stats[name][kind] += amount

    def _clean(self, text: str) -> str:
        text = " ".join(str(text).split())
        if self._api_key and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "***")
        return text[:300] + ("..." if len(text) > 300 else "")

    def _attempt(self, full: dict) -> tuple[dict | None, str | None, str, float | None]:
        """One HTTP attempt: (response JSON, failure kind, message, Retry-After seconds)."""
        openai = self._openai
        try:
            api = self.client.chat.completions if self.endpoint == "chat" else self.client.completions
            raw = api.with_raw_response.create(**full)
            response = raw.http_response.json()
        except openai.APIStatusError as err:
            body = err.body if isinstance(err.body, dict) else {}
            message = body.get("message") or err.message
            code = body.get("code")
            return (
                None,
                status_kind(err.status_code, code if isinstance(code, str) else None),
                f"{err.status_code}: {self._clean(message)}",
                parse_retry_after(err.response.headers),
            )
        except openai.APITimeoutError:
            return None, "timeout", f"no answer within --timeout {self.timeout:g} s", None
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            return None, "connection", self._clean(f"{type(cause).__name__}: {cause}"), None
        except openai.OpenAIError as err:  # anything else the SDK raises about an answer it cannot use
            return None, "bad_response", self._clean(f"{type(err).__name__}: {err}"), None
        except ValueError as err:  # a 200 whose body is not JSON (a web page at a wrong --base_url)
            return None, "bad_response", self._clean(f"the answer is not JSON ({err})"), None
        if not isinstance(response, dict) or first_choice(response) is None:
            return None, "bad_response", self._clean(f"no `choices` in the answer: {str(response)[:200]}"), None
        return response, None, "", None

    def _send(self, key: str, full: dict, strict: bool, accept: Accept | None = None) -> Result:
        attempt = 0
        while True:
            if self._stop.is_set():
                return Result(None, "cancelled", "stopped")
            self._count("requests_sent")
            response, kind, message, retry_after = self._attempt(full)
            if response is not None:
                if accept is not None and not accept(response):
                    self._unreadable[key] = response
                    if self.cache is not None:
                        self.cache.put_unreadable(key, self.model, response)
                elif self.cache is not None:
                    self.cache.put(key, self.model, response)
                usage = response.get("usage") or {}
                with self._lock:
                    self.stats["answered"] += 1
                    for name in ("prompt_tokens", "completion_tokens"):
                        if isinstance(usage.get(name), int):
                            self.stats[name] += usage[name]
                return Result(response)
            self._count("errors_by_kind", kind)
            if kind in FATAL:
                raise IpoError(self._fatal_message(kind, message))
            if kind in RETRYABLE and attempt < self.max_retries:
                attempt += 1
                delay = retry_delay(attempt, self.retry_base_delay, retry_after, self._rng)
                logger.info(
                    "request failed (%s, %s); retry %d/%d in %.2g s", kind, message, attempt, self.max_retries, delay
                )
                self._count("retries")
                if self._stop.wait(delay):
                    return Result(None, "cancelled", "stopped")
                continue
            if strict:
                raise IpoError(self._fatal_message(kind, message, attempts=attempt + 1))
            self._count("gave_up_by_kind", kind)
            logger.warning(
                "request failed after %d attempt(s) (%s, %s); counted as a failure, the next run "
                "of this command tries it again",
                attempt + 1,
                kind,
                message,
            )
            return Result(None, kind, message)

    def _fatal_message(self, kind: str, message: str, attempts: int = 1) -> str:
        text = self._fatal_text(kind, message, attempts)
        for flag, own in self.flag_names.items():
            text = re.sub(rf"{re.escape(flag)}(?![\w-])", own, text)
        return text

    def _fatal_text(self, kind: str, message: str, attempts: int) -> str:
        where = f"{self.base_url} (model {self.model!r})"
        return {
            "unauthorized": f"{where} refused the API key from ${self.key_env} ({message}); check the key, or "
            "use --api_key_env to pick the variable that holds this provider's key",
            "forbidden": f"{where} denied access ({message}); the key may lack access to this model",
            "not_found": f"{where}: no such model or endpoint ({message}); check --model (OpenRouter ids look "
            "like openai/gpt-4o-mini) and --base_url (it usually ends in /v1)",
            "quota": f"{where}: the account's quota is exhausted ({message}); check billing, then re-run",
            "connection": f"cannot reach {self.base_url} after {attempts} attempt(s) ({message}); check "
            "--base_url and that the server is running",
            "timeout": f"{where} did not answer in {attempts} attempt(s) of --timeout {self.timeout:g} s",
            "rejected": f"{where} rejected the first request ({message}); check --model and that the model "
            "accepts these parameters",
            "bad_response": f"{where} did not answer with {self.endpoint.replace('chat', 'chat-completions')} JSON in {attempts} attempt(s) "
            f"({message}); check --base_url (it usually ends in /v1)",
        }.get(
            kind,
            f"{where} failed the first request in {attempts} attempt(s) ({kind}, {message}); "
            "nothing was answered, try again later",
        )

    # ------------------------------------------------------------------ many requests
    def fetch_many(self, bodies: Sequence[dict], accept: Accept | None = None) -> Iterator[list[tuple[int, Result]]]:
        """Every body, cached ones first (in one batch, nothing sent), then the rest at most
        ``max_concurrency`` at a time; yields lists of (index into ``bodies``, Result) as they complete.
        ``accept`` as in ``fetch``.

        Identical bodies are sent once. A fatal error stops everything and propagates as IpoError; the
        answers that arrived before it are in the cache.
        """
        ready: list[tuple[int, Result]] = []
        waiting: dict[str, list[int]] = {}
        full_requests: dict[str, dict] = {}
        for index, body in enumerate(bodies):
            key, full = self.full_request(body)
            hit = self._from_cache(key, accept)
            if hit is not None:
                ready.append((index, hit))
            else:
                waiting.setdefault(key, []).append(index)
                full_requests[key] = full
        if ready:
            yield ready
        if not waiting:
            return
        queue = iter(waiting.items())
        in_flight: dict = {}
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="ipo-api")
        self._stop.clear()

        def top_up():  # keep the workers busy, with a little queued, but not the whole dataset submitted
            while len(in_flight) < 2 * self.max_concurrency:
                item = next(queue, None)
                if item is None:
                    return
                key, indices = item
                in_flight[pool.submit(self._send, key, full_requests[key], False, accept)] = indices

        try:
            top_up()
            while in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                batch = []
                for future in done:
                    indices = in_flight.pop(future)
                    result = future.result()  # re-raises a fatal IpoError from the worker
                    batch.extend((index, result) for index in indices)
                top_up()
                yield batch
        finally:
            self._stop.set()  # no new attempts or retries; requests already on the wire finish and are cached
            pool.shutdown(wait=True, cancel_futures=True)
            self._stop.clear()
