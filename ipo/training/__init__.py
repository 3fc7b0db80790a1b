"""Training layer: preference training (DPO and the project's own losses) and SFT through TRL and PEFT.

May import plumbing (ipo/*.py) and ipo.judges; never ipo.benchmarks (a sibling), ipo.selfimprove or ipo.cli.
Settings arrive as values (``TrainingOptions``), never as a command line; the flags live in ipo/cli/training.py.

Modules (one idea each, so that the TRL-specific parts are few and findable):
    options          TrainingOptions (the project's names and the paper's defaults), checks, run file names
    config           the only module that names TRL/PEFT arguments: DPOConfig, SFTConfig, LoraConfig, dpo_config.json
    trainer          PreferenceLossTrainer, the DPOTrainer subclass carrying ipo_sum, kto_pair and rpo_*
    dpo              build_trainer, train_dpo, train_summary
    sft              train_sft;   merge  adapters after training;   distributed  accelerate launch helpers
    losses           the preference losses as pure tensor functions
    preference_data  preference / SFT dataset layouts into TRL's rows
    run_pairs        a self-improvement run's pairs.jsonl as training data (its split, its prompt format)
    embeddings       RPO's prompt embeddings
    recipes          YAML recipes and sweep grids
    figures          training curves, the judge before/after DPO, the sweep figure
"""
