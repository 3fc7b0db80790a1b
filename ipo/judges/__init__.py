"""The judges layer: everything that turns a (prompt, response) pair into a preference score.

It imports only plumbing (ipo, ipo.data, ipo.prompts, ipo.modeling, ipo.runs, ipo.report) and its own
modules; benchmarks, training, self-improvement and the command line build on it, never the reverse.
No module here parses the command line: settings come in as values (ipo.modeling.ModelSpec, the
prompt format, lengths, batch sizes).

  batching      tokenise, truncate, pad and batch (length-sorted batches under a token budget, the
                prefix tree of shared prompts); shared by every local judge and the sampler
  yes_no        the paper's primitive: P(Yes) at the next token, normalised over Yes/No (Garg et al.,
                arXiv 2502.16182); YesNoJudge, YesNoScorer, load_judge
  self_reward   the Self-Rewarding 5-point judge (the paper's baseline): generation and score parsing
  reward_model  the external reward-model baseline (a sequence-classification head's reward)
  api_client    HTTP to any OpenAI-compatible endpoint: retries, Retry-After, response cache, concurrency
  api           the three judges through that client (Yes/No from log-probabilities, pairwise, 5-point):
                request bodies, answer parsing, ApiScorer

Why the split: the batching helpers are generic and used by three judges and the sampler, so they do not
live beside the paper's primitive; the API transport (how to get an answer reliably and pay once) is
independent of what the judges ask, so it is tested and read apart from the request/parse logic.
Every scorer yields ``(example, scores, extra)`` batches, so ipo.runs.score_into_log drives any of them.
"""
