"""Core of the reference implementation of "IPO: Your Language Model is Secretly a Preference Classifier"
(Garg, Singh, Singh, Chopra; arXiv 2502.16182; ACL 2025).

"IPO" here is the paper's *Implicit* Preference Optimization: an instruction-tuned LLM judges a
(prompt, response) pair by P(Yes) / (P(Yes) + P(No)) at its next token. It is not TRL's
``loss_type="ipo"`` (Identity-PO, Azar et al.); the paper's self-improvement step trains with plain
DPO (the sigmoid loss).

The package is layered; each layer imports only itself and the layers above it in this list (tests/test_layout.py
checks it), so a reader can start at the bottom and never meet a name defined higher up:

    plumbing      ipo/*.py: run folders and atomic writes (runs), records and loaders (data), every upstream
                  prompt as data (prompts), model loading (modeling), tables and figures (report), opt-in
                  Hub uploads (hub), the offline models shipped on PyPI (assets), metrics.json's "run" object
                  (run_info), the paper's published numbers (paper)
    judges        ipo/judges/: batching helpers, the Yes/No judge (the paper's primitive), the 5-point
                  Self-Rewarding judge, the reward-model scorer, the API client and the API judges
    benchmarks    ipo/benchmarks/: RewardBench, RM-Bench, prompt search, MMLU grading; each benchmark
                  writes its own outputs
    training      ipo/training/: the only code that names TRL's arguments; the preference losses and trainer,
                  DPO, SFT, merging, preference data, RPO embeddings, sweep recipes (beside benchmarks: neither
                  imports the other)
    selfimprove   ipo/selfimprove/: sampling, pair selection, the sample -> judge -> pair -> train -> merge loop
    cli           ipo/cli/: the only code that knows argparse; it turns flags into the values the core takes

The scripts in DPO/ and Preference_Comparison/ parse flags with ipo.cli and call the core stage by stage.
"""

__version__ = "0.1.0"


class IpoError(Exception):
    """A problem with the user's input or environment. Scripts print it as one line and exit 1."""
