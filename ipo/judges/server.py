"""The Yes/No judge on a serving engine: P(Yes) from an OpenAI-compatible completions endpoint (vLLM, SGLang,
llama.cpp's server) instead of a model in this process (``--backend server``).

The paper's score (Garg et al., arXiv 2502.16182, section 3) is p'_yes = p_yes / (p_yes + p_no) at the judge
prompt's next token. The prompt is built here exactly as the local judge builds it (``YesNoJudge.encode``,
with the local tokenizer: same wrappers, chat template, truncation and Yes/No token ids), and sent as
token ids, so the server scores the very sequence the local judge would. Two ways to read the answer:

  exact   (``exact_prompt_logprobs``) vLLM's ``prompt_logprobs`` extension: for every candidate token c
          (each Yes and No id) the prompt ``ids + [c]`` is sent with ``prompt_logprobs=0``, and the last
          position's entry is log P(c | ids), for any c, however unlikely. One request per judged sequence
          carries all its candidates (a list of token-id prompts). Its cost: vLLM computes a request that
          asks for prompt log-probabilities without reading its prefix cache, so each candidate is a full
          prefill: 2 per sequence in upstream mode, one per single-token Yes/No variant in chat mode (up to
          12). p'_yes = sigmoid(LSE(yes log-probs) - LSE(no log-probs)), the local judge's formula
          (``p_yes_from_logits``: the normaliser cancels, repeated ids count repeatedly as upstream's sum).
  approx  (``approx_top_logprobs``) any server with the legacy ``logprobs`` parameter: one greedy token with
          its ``top_logprobs`` (K alternatives; vLLM allows 20 unless started with ``--max-logprobs``). A
          Yes/No id outside the top K has no number: it counts as absent (``missing_ids``); when a whole
          side is absent its mass is bounded by the K-th log-probability (``one_side_missing``), and when
          both are, the score is 0.5 (``both_missing``). Marked approximate in config.json and metrics.json.

Failures: every request goes through ipo.judges.api_client (retries with backoff on 429/5xx/timeouts/dropped
connections, each counted in ``usage()``); a request that still fails after its retries stops the run with
one line, and re-running the command resumes from the last finished window (the scripts' record logs).
The key is read from the environment (``--server_api_key_env``, default VLLM_API_KEY, the variable vLLM's own
server reads; unset: "EMPTY", which a server started without a key accepts).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ipo import IpoError
from ipo.judges.api_client import ApiClient, first_choice
from ipo.judges.batching import DEFAULT_BATCH_SIZE, check_prompt_format, require_chat_template
from ipo.judges.self_reward import SelfRewardScorer
from ipo.judges.yes_no import YesNoJudge, resolve_yes_no_tokens
from ipo.modeling import load_tokenizer, split_gguf

logger = logging.getLogger("ipo")

BACKENDS = ("hf", "server")
P_YES_METHODS = {"exact": "exact_prompt_logprobs", "approx": "approx_top_logprobs"}
PROMPT_AS = ("tokens", "text")
DEFAULT_SERVER_KEY_ENV = "VLLM_API_KEY"  # vLLM's server reads its --api-key from the same variable
NO_KEY = "EMPTY"  # what the openai SDK sends to a server started without a key (it needs some value)
DEFAULT_TOP_LOGPROBS = 20  # vLLM's default --max-logprobs: the most a stock server returns
# Sequences per scoring window: every window is fetched concurrently and is one resume checkpoint; a few
# times the client's concurrency keeps the server's batch full without holding much unsaved work.
WINDOW_REQUESTS_PER_WORKER = 4


@dataclass(frozen=True)
class ServerSettings:
    """Where the served model is and how to read P(Yes) from it (the ``--backend server`` flags)."""

    base_url: str
    served_model: str
    p_yes_method: str = "exact"  # a key of P_YES_METHODS
    top_logprobs: int = DEFAULT_TOP_LOGPROBS  # approx only
    key_env: str = DEFAULT_SERVER_KEY_ENV
    timeout: float = 600.0  # seconds per request: a 256-token sample of a 70B model under load takes a while
    max_retries: int = 5
    retry_base_delay: float = 1.0  # seconds before the first retry, doubled each time (ipo.judges.api_client)
    max_concurrency: int = 32  # requests in flight: enough to fill a continuous-batching engine's batch
    prompt_as: str = "tokens"  # "text": the ids decoded, for servers that take only text (llama-cpp-python)


def request_failed(result, what: str, max_retries: int, saved: str = "") -> IpoError:
    """The one-line error for a request the server failed after the client's retries. ``what``: "judge" or
    "sampling"; ``saved``: what the run kept ("the finished prompts"), if anything."""
    kept = f"{saved} are saved: " if saved else ""
    return IpoError(
        f"the server failed a {what} request ({result.failure}: {result.message}; retried up to {max_retries} "
        f"times where a retry could help); {kept}re-run the same command to resume"
    )


@dataclass
class ServedModel:
    """A model behind a server, standing where a loaded model would (``Loop.load`` returns it with the local
    tokenizer): ``path`` is the local folder or id its tokenizer and generation config come from."""

    path: str
    settings: ServerSettings
    client: ApiClient
    trust_remote_code: bool = False  # for the local tokenizer and generation config

    def describe(self) -> dict:
        s = self.settings
        return {
            "backend": "server",
            "base_url": self.client.base_url,
            "served_model": s.served_model,
            "api_key_env": s.key_env,
            "tokenizer_from": self.path,
            "prompt_as": s.prompt_as,
        }

    def prompt(self, tokenizer, ids: Sequence[int]):
        """What a request sends as its prompt: the token ids, or (``prompt_as="text"``) their text, special
        tokens written out, which the server tokenises again (the same ids only where that round trip holds). A
        leading BOS that the tokenizer adds to any text is left to the server, which adds its own likewise; one
        the prompt itself holds (a chat template's first token, e.g. SmolLM2's <|im_start|>) stays."""
        if self.settings.prompt_as != "text":
            return list(ids)
        bos = getattr(tokenizer, "bos_token_id", None)
        adds_bos = bos is not None and tokenizer("a").input_ids[:1] == [bos]
        ids = list(ids)[1:] if adds_bos and ids and ids[0] == bos else list(ids)
        return tokenizer.decode(ids, skip_special_tokens=False)

    @property
    def generation_config(self):
        """The model's generation config from its local files (stop tokens, sampling defaults); never None."""
        from transformers import GenerationConfig

        return read_generation_config(self.path, self.trust_remote_code) or GenerationConfig()


def read_generation_config(model_name_or_path: str, trust_remote_code: bool = False):
    """A model's generation config read from its files (no weights), or None when it has none."""
    from transformers import AutoConfig, GenerationConfig

    folder, gguf_file = split_gguf(model_name_or_path)
    try:
        return GenerationConfig.from_pretrained(folder)
    except Exception:  # no generation_config.json: transformers derives one from the model config
        try:
            return GenerationConfig.from_model_config(
                AutoConfig.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
            )
        except Exception:
            return None


# the server backend's flags for what the API scripts call --model, --api_key_env, --timeout (ipo.cli)
SERVER_FLAGS = {"--model": "--served_model", "--api_key_env": "--server_api_key_env", "--timeout": "--server_timeout"}


def server_client(settings: ServerSettings) -> ApiClient:
    """A completions client for the server; the key from ``settings.key_env`` (unset: NO_KEY)."""
    key = os.environ.get(settings.key_env, "").strip()
    if not key:
        logger.info(
            "$%s is not set: no API key is sent (a server started with --api-key refuses that)", settings.key_env
        )
    return ApiClient(
        base_url=settings.base_url,
        model=settings.served_model,
        api_key=key or NO_KEY,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
        retry_base_delay=settings.retry_base_delay,
        max_concurrency=settings.max_concurrency,
        key_env=settings.key_env,
        endpoint="completions",
        flag_names=SERVER_FLAGS,
    )


def check_server_settings(settings: ServerSettings) -> None:
    """One line (IpoError) for settings that cannot work; sends nothing."""
    if not settings.base_url.startswith(("http://", "https://")):
        raise IpoError(
            f"--base_url {settings.base_url!r} must start with http:// or https:// (e.g. http://host:8000/v1)"
        )
    if not settings.served_model:
        raise IpoError("--backend server needs --served_model: the model id the server serves (GET /v1/models)")
    if settings.p_yes_method not in P_YES_METHODS:
        raise IpoError(f"unknown P(Yes) method {settings.p_yes_method!r}; choose from {', '.join(P_YES_METHODS)}")
    if settings.prompt_as not in PROMPT_AS:
        raise IpoError(f"unknown prompt form {settings.prompt_as!r}; choose from {', '.join(PROMPT_AS)}")
    if settings.prompt_as == "text" and settings.p_yes_method == "exact":
        raise IpoError(
            "--server_prompt text cannot give the exact P(Yes): the server re-tokenises the text, so prompt + candidate "
            "is not the sequence the judge scores; use --server_p_yes approx"
        )
    if settings.top_logprobs < 1 or settings.max_concurrency < 1 or settings.max_retries < 0 or settings.timeout <= 0:
        raise IpoError("--server_top_logprobs, --server_concurrency and --server_timeout must be positive")


def connect(model_path: str, settings: ServerSettings, trust_remote_code: bool = False) -> ServedModel:
    """The served model, after checking that the server answers ``GET /models`` and lists ``served_model``."""
    check_server_settings(settings)
    client = server_client(settings)
    served = client.served_models()
    if settings.served_model not in served:
        raise IpoError(
            f"{client.base_url} serves {', '.join(map(repr, served)) or 'no model'}, not --served_model "
            f"{settings.served_model!r}"
        )
    logger.info("server backend: %s at %s (tokenizer from %s)", settings.served_model, client.base_url, model_path)
    return ServedModel(model_path, settings, client, trust_remote_code)


# ---------------------------------------------------------------------------------------------------
# P(Yes) from log-probabilities (pure)
# ---------------------------------------------------------------------------------------------------
def logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def p_yes_from_logprobs(yes: Sequence[float], no: Sequence[float]) -> float:
    """sigmoid(LSE(yes) - LSE(no)) = p_yes / (p_yes + p_no), in float64 (the local judge's formula)."""
    return 1.0 / (1.0 + math.exp(logsumexp(no) - logsumexp(yes)))


def logprob_value(entry) -> float | None:
    """The number of a vLLM Logprob entry ({"logprob": x, "rank", "decoded_token"}) or a bare number."""
    value = entry.get("logprob") if isinstance(entry, dict) else entry
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def top_logprob_ids(top: dict, ids_of: dict[str, list[int]]) -> dict[int, float]:
    """{token id: log-prob} of a ``top_logprobs`` dict, keyed "token_id:N" (vLLM's return_tokens_as_token_ids)
    or by token text, mapped through ``ids_of`` (text -> the candidate ids it spells)."""
    found: dict[int, float] = {}
    for key, value in top.items():
        number = logprob_value(value)
        if number is None:
            continue
        if key.startswith("token_id:") and key[9:].lstrip("-").isdigit():
            found[int(key[9:])] = number
        else:
            for token_id in ids_of.get(key, ()):
                found.setdefault(token_id, number)
    return found


# ---------------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------------
class ServerYesNoJudge(YesNoJudge):
    """YesNoJudge's interface (``encode``, ``score_groups``, ``tokens``, ``stats``) over a served model.

    Encoding is the local judge's own (its methods, with the local tokenizer); only scoring goes to the
    server. ``YesNoScorer`` and every script use it unchanged.
    """

    def __init__(
        self,
        served: ServedModel,
        tokenizer,
        scoring: str = "upstream",
        max_length: int = 1024,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):  # the parent's __init__ needs a model's weights; what encode() reads is set here
        check_prompt_format(scoring)
        if scoring == "chat":
            require_chat_template(tokenizer)
        if max_length < 8:
            raise IpoError(f"--max_length {max_length} is too small for a judge prompt")
        self.served, self.client, self.settings = served, served.client, served.settings
        self.tokenizer, self.scoring, self.max_length, self.batch_size = tokenizer, scoring, max_length, batch_size
        self.tokens = resolve_yes_no_tokens(tokenizer, scoring)
        self.method = P_YES_METHODS[self.settings.p_yes_method]
        self.candidates = list(dict.fromkeys(self.tokens.yes_ids + self.tokens.no_ids))
        self._ids_of: dict[str, list[int]] = {}
        for token_id in self.candidates:
            spellings = {tokenizer.decode([token_id]), *tokenizer.convert_ids_to_tokens([token_id])}
            for text in spellings:
                self._ids_of.setdefault(text, []).append(token_id)
        self._chat_pieces: dict[str, tuple[str, str, str]] = {}
        self.stats = {"sequences": 0, "requests": 0}
        if self.method == "approx_top_logprobs":
            self.stats.update(missing_ids=0, one_side_missing=0, both_missing=0)

    def describe(self) -> dict:
        """config.json / metrics.json: where P(Yes) came from and how."""
        out = {**self.served.describe(), "p_yes_method": self.method}
        if self.method == "approx_top_logprobs":
            out.update(approximate=True, top_logprobs=self.settings.top_logprobs)
        else:
            out.update(approximate=False)
        return out

    # ------------------------------------------------------------------ requests
    def request(self, ids: Sequence[int]) -> dict:
        """The completions request body that scores one judge prompt (token ids)."""
        if self.method == "exact_prompt_logprobs":
            return {
                "prompt": [list(ids) + [c] for c in self.candidates],
                "max_tokens": 1,
                "temperature": 0.0,
                "extra_body": {"prompt_logprobs": 0},
            }
        return {
            "prompt": self.served.prompt(self.tokenizer, ids),
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": self.settings.top_logprobs,
            "extra_body": {"return_tokens_as_token_ids": True},
        }

    def _exact_logprobs(self, response: dict) -> dict[int, float] | None:
        """{candidate: log P(candidate | prompt)} from the last prompt position of each choice, or None."""
        choices = response.get("choices") if isinstance(response, dict) else None
        if not isinstance(choices, list) or len(choices) != len(self.candidates):
            return None
        found = {}
        for candidate, choice in zip(self.candidates, sorted(choices, key=lambda c: c.get("index", 0))):
            entries = choice.get("prompt_logprobs") if isinstance(choice, dict) else None
            last = entries[-1] if isinstance(entries, list) and entries else None
            number = logprob_value(last.get(str(candidate))) if isinstance(last, dict) else None
            if number is None:
                return None
            found[candidate] = number
        return found

    def _top_logprobs(self, response: dict) -> dict | None:
        choice = first_choice(response)
        logprobs = choice.get("logprobs") if choice else None
        top = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
        return top[0] if isinstance(top, list) and top and isinstance(top[0], dict) else None

    def readable(self, response: dict) -> bool:
        if self.method == "exact_prompt_logprobs":
            return self._exact_logprobs(response) is not None
        return self._top_logprobs(response) is not None

    def p_yes(self, response: dict) -> float:
        """p'_yes of one answered request (``readable`` said yes)."""
        yes_ids, no_ids = self.tokens.yes_ids, self.tokens.no_ids
        if self.method == "exact_prompt_logprobs":
            found = self._exact_logprobs(response)
            return p_yes_from_logprobs([found[i] for i in yes_ids], [found[i] for i in no_ids])
        top = self._top_logprobs(response)
        found = top_logprob_ids(top, self._ids_of)
        yes, no = [found[i] for i in yes_ids if i in found], [found[i] for i in no_ids if i in found]
        self.stats["missing_ids"] += sum(i not in found for i in self.candidates)
        if not yes and not no:
            self.stats["both_missing"] += 1
            return 0.5
        if not yes or not no:  # a side outside the top K: its mass is below the K-th entry's (an upper bound)
            self.stats["one_side_missing"] += 1
            floor = min(v for v in (logprob_value(x) for x in top.values()) if v is not None)
            bound = [floor + math.log(len(yes_ids if not yes else no_ids))]
            yes, no = (yes or bound), (no or bound)
        return p_yes_from_logprobs(yes, no)

    def probe(self) -> None:
        """One strict request before the run starts: a server that cannot give this method's numbers (no
        ``prompt_logprobs``: not vLLM; no ``logprobs``) stops here with one line, not after the first window."""
        ids = self.tokenizer("Yes", add_special_tokens=False).input_ids[:1] or [self.candidates[0]]
        result = self.client.fetch(self.request(ids), strict=True)
        if not self.readable(result.response):
            what = (
                "prompt_logprobs for token-id prompts (a vLLM extension); use --server_p_yes approx for other servers"
                if self.method == "exact_prompt_logprobs"
                else "top_logprobs of the first generated token"
            )
            raise IpoError(f"{self.client.base_url} answered without {what}: {str(result.response)[:200]}")

    # ------------------------------------------------------------------ scoring
    def score_groups(self, groups: Sequence[Sequence[Sequence[int]]]) -> Iterator[tuple[list[int], list[list[float]]]]:
        """As YesNoJudge.score_groups: (group indices, p_yes per group) per window, here in the given order."""
        window_size = max(self.batch_size, WINDOW_REQUESTS_PER_WORKER * self.client.max_concurrency)
        window: list[int] = []
        for g, group in enumerate(groups):
            if any(len(seq) == 0 for seq in group):
                raise IpoError("cannot score an empty prompt")
            window.append(g)
            if sum(len(groups[i]) for i in window) >= window_size or g == len(groups) - 1:
                yield window, self._score_window([groups[i] for i in window])
                window = []

    def _score_window(self, groups) -> list[list[float]]:
        sequences = [seq for group in groups for seq in group]
        scores: list[float | None] = [None] * len(sequences)
        for batch in self.client.fetch_many([self.request(seq) for seq in sequences], accept=self.readable):
            for index, result in batch:
                if result.response is None:
                    raise request_failed(result, "judge", self.settings.max_retries, "the finished windows")
                if not self.readable(result.response):
                    raise IpoError(f"the server's answer has no usable log-probabilities: {str(result.response)[:200]}")
                scores[index] = self.p_yes(result.response)
        self.stats["sequences"] += len(sequences)
        self.stats["requests"] += len(sequences)
        out, start = [], 0
        for group in groups:
            out.append(scores[start : start + len(group)])
            start += len(group)
        return out


class ServerSelfRewardScorer(SelfRewardScorer):
    """The 5-point judge (ipo.judges.self_reward) with its greedy generation on the server: the same token-id
    prompts, parsing and outputs; each judgement is one completions request (temperature 0, the model's EOS
    ids as stop tokens, ``max_new_tokens``). Greedy text can differ from the local model's where two tokens
    are near-tied (another engine's kernels), which no setting removes."""

    def __init__(self, served: ServedModel, tokenizer, **settings):
        super().__init__(served, tokenizer, **settings)  # reads served.generation_config for the EOS ids
        self.served, self.client = served, served.client

    def generate(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        bodies = [
            {
                "prompt": self.served.prompt(self.tokenizer, ids),
                "max_tokens": self.max_new_tokens,
                "temperature": 0.0,
                "extra_body": {"stop_token_ids": sorted(self.eos_ids), "return_token_ids": True},
            }
            for ids in prompts
        ]
        continuations: list[list[int] | None] = [None] * len(bodies)
        for batch in self.client.fetch_many(bodies):
            for index, result in batch:
                if result.response is None:
                    raise request_failed(result, "judge", self.served.settings.max_retries)
                choice = first_choice(result.response) or {}
                ids = choice.get("token_ids")
                if not (isinstance(ids, list) and all(isinstance(t, int) for t in ids)):
                    ids = self.tokenizer(str(choice.get("text") or ""), add_special_tokens=False).input_ids
                end = next((i + 1 for i, token in enumerate(ids) if token in self.eos_ids), len(ids))
                continuations[index] = list(ids[:end])  # as the local judge: cut after the first EOS
        self.stats["sequences"] += len(prompts)
        self.stats["generated_tokens"] += sum(len(c) for c in continuations)
        return continuations


def make_self_reward_scorer(model, tokenizer, **settings) -> SelfRewardScorer:
    """The local 5-point judge for a loaded model, ServerSelfRewardScorer for a ServedModel."""
    if isinstance(model, ServedModel):
        return ServerSelfRewardScorer(model, tokenizer, **settings)
    return SelfRewardScorer(model, tokenizer, **settings)


def make_yes_no_judge(model, tokenizer, **settings) -> YesNoJudge:
    """The local YesNoJudge for a loaded model, ServerYesNoJudge for a ServedModel (only scoring, max_length
    and batch_size apply to it); ``settings`` are YesNoJudge's keyword arguments."""
    if isinstance(model, ServedModel):
        judge = ServerYesNoJudge(
            model,
            tokenizer,
            scoring=settings.get("scoring", "upstream"),
            max_length=settings.get("max_length", 1024),
            batch_size=settings.get("batch_size", DEFAULT_BATCH_SIZE),
        )
        judge.probe()
        return judge
    return YesNoJudge(model, tokenizer, **settings)


def load_server_judge(
    model_path: str,
    settings: ServerSettings,
    scoring: str,
    max_length: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    trust_remote_code: bool = False,
) -> tuple[ServerYesNoJudge, dict]:
    """load_judge's counterpart: the local tokenizer (no weights), the server checked and probed.

    Returns (judge, resolved settings for config.json: the server, the P(Yes) method, the Yes/No token ids).
    """
    tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
    judge = make_yes_no_judge(
        connect(model_path, settings, trust_remote_code),
        tokenizer,
        scoring=scoring,
        max_length=max_length,
        batch_size=batch_size,
    )
    tokens = judge.tokens
    logger.info(
        "Yes ids %s %s, No ids %s %s; P(Yes): %s",
        tokens.yes_ids,
        tokens.yes_tokens,
        tokens.no_ids,
        tokens.no_tokens,
        judge.method,
    )
    return judge, {**judge.describe(), "yes_no_tokens": tokens.as_dict()}
