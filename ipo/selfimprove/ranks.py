"""A self-improvement run over several processes (``torchrun`` / ``accelerate launch``): which prompts each
process samples and judges, which process writes which file, and where each one loads its model.

Under one process every helper is the identity or a no-op. Under N processes:

* the sample and judge stages shard what their log still lacks: process r takes every N-th prompt, from the
  r-th. The main process appends its share to the stage's log (responses.jsonl, scored.jsonl, ...), every
  other process to its own part file next to it (``responses.rank<r>.jsonl``); once all are done the main
  process merges the parts into the log and removes them. A part left by a killed run is merged at the next
  start, whatever the number of processes then. Samples do not depend on the shard (one random stream per
  prompt and sample), scores only by the float rounding of other batches (docs/precision.md);
* everything else (pairs, metrics.json, the merge, config.json, results.md) is computed by every process
  and written by the main one, while the others wait for it;
* training runs on every process (the Trainer's DDP);
* a model for sampling or judging goes to this process's own GPU (``cuda:<local rank>``), not every
  process to GPU 0.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ipo import IpoError
from ipo.modeling import SHARD, resolve_device
from ipo.runs import RecordLog
from ipo.training.distributed import process_state, wait_for_everyone

logger = logging.getLogger("ipo")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes (``index`` 0 is the main one)."""

    index: int = 0
    count: int = 1
    local_index: int = 0  # the process's index on its machine: its GPU

    @property
    def main(self) -> bool:
        return self.index == 0

    def wait(self) -> None:
        """Wait until every process gets here (nothing to wait for in one process)."""
        if self.count > 1:
            wait_for_everyone()

    def shard(self, items: Sequence) -> list:
        """This process's share of ``items``: every ``count``-th, from the ``index``-th."""
        return list(items)[self.index :: self.count]

    def device(self, device: str) -> str:
        """Where this process loads a model for sampling or judging: ``device`` in one process; under several,
        a GPU device becomes this process's own GPU (``cuda:<local rank>``)."""
        if self.count <= 1:
            return device
        if device == SHARD:
            raise IpoError(
                f"--device {SHARD} spreads one model over every GPU: run it as one process, not under "
                "torchrun / accelerate launch"
            )
        resolved = resolve_device(device)
        return f"cuda:{self.local_index}" if resolved.startswith("cuda") else resolved


def current_ranks() -> Ranks:
    """The Ranks of this process (one process without torchrun / accelerate launch)."""
    state = process_state()
    return Ranks(state.process_index, state.num_processes, state.local_process_index)


def part_path(log_path: str | Path, rank: int) -> Path:
    """The part file process ``rank`` (> 0) appends its share of a stage to: responses.rank1.jsonl."""
    log_path = Path(log_path)
    return log_path.with_name(f"{log_path.stem}.rank{rank}{log_path.suffix}")


def merge_parts(log_path: str | Path) -> int:
    """Append the records of every part file of ``log_path`` that the log lacks, then remove the parts (main
    process only). Returns how many records were added."""
    log_path = Path(log_path)
    pattern = re.compile(rf"{re.escape(log_path.stem)}\.rank(\d+){re.escape(log_path.suffix)}")
    parts = sorted(
        (int(m.group(1)), p)
        for p in log_path.parent.glob(f"{log_path.stem}.rank*{log_path.suffix}")
        if (m := pattern.fullmatch(p.name))
    )
    if not parts:
        return 0
    log = RecordLog(log_path)
    before = len(log)
    for _, part in parts:
        log.append(list(RecordLog(part).records.values()))
        part.unlink()
    return len(log) - before


def run_sharded(
    ranks: Ranks,
    log_path: str | Path,
    items: Sequence,
    work: Callable[[list, RecordLog], object],
    key: Callable = lambda item: item.id,
) -> None:
    """One sharded stage: ``work(my_items, log)`` on every process, with the items ``log_path`` lacks (by
    ``key``) split over the processes and each process's ``log`` its own (the stage's log for the main
    process, a part file for the others); the parts are merged into the log before this returns. ``work``
    is called on every process, also with no items (it may load what the next stage reuses); in one
    process it gets all ``items`` and the stage's log, and skips what the log holds itself."""
    if ranks.main:
        merge_parts(log_path)  # what the processes of a killed run left
    if ranks.count <= 1:
        work(list(items), RecordLog(log_path))  # the stage skips what its log holds, with a resume message
        return
    ranks.wait()
    done = RecordLog(log_path)
    mine = ranks.shard([item for item in items if key(item) not in done])
    work(mine, done if ranks.main else RecordLog(part_path(log_path, ranks.index)))
    ranks.wait()
    if ranks.main:
        merge_parts(log_path)
    ranks.wait()
