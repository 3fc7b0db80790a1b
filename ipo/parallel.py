"""Several processes (``torchrun``, ``accelerate launch``, SLURM through either): which examples each process
scores or samples, which process writes which file, where each one loads its model.

Under one process every helper is the identity or a no-op. Under N processes (data parallelism: each
process holds a whole model):

* a sharded stage (``run_sharded``: the benchmark scripts' scoring, the self-improvement loop's sampling and
  judging) splits what its log still lacks: process r takes every N-th item, from the r-th. The main process
  appends its share to the stage's log (predictions.jsonl, responses.jsonl, ...), every other process to its
  own part file next to it (``predictions.rank<r>.jsonl``); once all are done the main process merges the
  parts into the log and removes them. A part left by a killed run is merged at the next start, whatever
  the number of processes then, so a run resumes per shard and may resume with another N. A record does not
  depend on its shard, except for the float rounding of the other examples in its batch (docs/precision.md);
* one writer per run folder: the main process holds the folder's lock (``ipo.runs.lock_folder`` skips the
  others) and writes config.json, metrics and reports; the others write only their part files. Every
  process runs ``RunDir.check`` before its model loads (``check_on_every_process``), and a refusal on any
  of them stops all of them with the same line, rather than leaving the others waiting for a main process
  that has gone;
* each process loads its model on its own GPU (``cuda:<local rank>``), or on the CPU (gloo).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ipo import IpoError
from ipo.modeling import SHARD, ModelSpec, resolve_device
from ipo.runs import RecordLog, score_into_log

logger = logging.getLogger("ipo")


def process_state():
    """accelerate's process state (one per process). On a machine without a GPU it is made a CPU state, as
    the Trainer would (use_cpu), so that ``torchrun --nproc_per_node N`` also runs on CPU (gloo)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def wait_for_everyone() -> None:
    process_state().wait_for_everyone()


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
        """Where this process loads a model for scoring or sampling: ``device`` in one process; under several,
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

    def place(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` with this process's device (``device``)."""
        return dataclasses.replace(spec, device=self.device(spec.device))

    def quiet(self) -> None:
        """Keep the ipo logs of a process other than the main one to warnings (one progress log per run)."""
        if not self.main:
            logger.setLevel(logging.WARNING)


def current_ranks() -> Ranks:
    """The Ranks of this process (one process without torchrun / accelerate launch)."""
    state = process_state()
    return Ranks(state.process_index, state.num_processes, state.local_process_index)


def check_on_every_process(ranks: Ranks, check: Callable[[], object]):
    """``check()`` on every process (e.g. ``RunDir.check``, before a model loads); if it raises IpoError on
    any process, every process raises one (its own message, else the first process's), so that none is left
    waiting for the others. Returns what ``check`` returned."""
    error, result = None, None
    try:
        result = check()
    except IpoError as err:
        error = str(err)
    if ranks.count > 1:
        import torch.distributed as dist

        errors: list[str | None] = [None] * ranks.count
        dist.all_gather_object(errors, error)
        first = next(((rank, e) for rank, e in enumerate(errors) if e), None)
        if first and error is None:
            error = f"process {first[0]} refused the run: {first[1]}"
    if error:
        raise IpoError(error)
    return result


def start_on_main(ranks: Ranks, run, arguments: dict, **resolved) -> None:
    """``run.start`` (an ipo.runs.RunDir) on the main process only, the run folder's one writer, with how many
    processes do the work (``world_size``) among the resolved settings of its config.json."""
    if ranks.main:
        run.start(arguments, resolved={**resolved, "world_size": ranks.count})


def part_path(log_path: str | Path, rank: int) -> Path:
    """The part file process ``rank`` (> 0) appends its share of a stage to: predictions.rank1.jsonl."""
    log_path = Path(log_path)
    return log_path.with_name(f"{log_path.stem}.rank{rank}{log_path.suffix}")


def merge_parts(log_path: str | Path, key: str = "id") -> int:
    """Append the records of every part file of ``log_path`` that the log lacks (by the records' ``key``
    field), then remove the parts (main process only). Returns how many records were added."""
    log_path = Path(log_path)
    pattern = re.compile(rf"{re.escape(log_path.stem)}\.rank(\d+){re.escape(log_path.suffix)}")
    parts = sorted(
        (int(m.group(1)), p)
        for p in log_path.parent.glob(f"{log_path.stem}.rank*{log_path.suffix}")
        if (m := pattern.fullmatch(p.name))
    )
    if not parts:
        return 0
    log = RecordLog(log_path, key=key)
    before = len(log)
    for _, part in parts:
        log.append(list(RecordLog(part, key=key).records.values()))
        part.unlink()
    return len(log) - before


def run_sharded(
    ranks: Ranks,
    log_path: str | Path,
    items: Sequence,
    work: Callable[[list, RecordLog], object],
    key: Callable = lambda item: item.id,
    record_key: str = "id",
) -> None:
    """One sharded stage: ``work(my_items, log)`` on every process, with the items ``log_path`` lacks (by
    ``key``; the log's records carry it in their ``record_key`` field) split over the processes and each
    process's ``log`` its own (the stage's log for the main process, a part file for the others); the parts
    are merged into the log before this returns. ``work`` is called on every process, also with no items
    (it may load what the next stage reuses); in one process it gets all ``items`` and the stage's log, and
    skips what the log holds itself."""
    if ranks.main:
        merge_parts(log_path, record_key)  # what the processes of a killed run left
    if ranks.count <= 1:
        work(list(items), RecordLog(log_path, key=record_key))  # the stage skips what its log holds, with a message
        return
    ranks.wait()
    done = RecordLog(log_path, key=record_key)
    mine = ranks.shard([item for item in items if key(item) not in done])
    work(mine, done if ranks.main else RecordLog(part_path(log_path, ranks.index), key=record_key))
    ranks.wait()
    if ranks.main:
        merge_parts(log_path, record_key)
    ranks.wait()


def score_sharded(
    ranks: Ranks,
    scorer,
    examples: Sequence,
    log_path: str | Path,
    make_record,
    record_key: str = "id",
    unit: str = "example",
    desc: str = "scoring",
) -> RecordLog | None:
    """``ipo.runs.score_into_log`` over the processes (``run_sharded``): every process scores its share of
    the examples ``log_path`` lacks. Returns the merged log on the main process, None on the others (which
    then have nothing left to write)."""

    def work(mine: list, log: RecordLog) -> None:
        if mine or ranks.count <= 1:
            score_into_log(scorer, mine, log, make_record, unit=unit, desc=desc)

    run_sharded(ranks, log_path, examples, work, record_key=record_key)
    return RecordLog(log_path, key=record_key) if ranks.main else None
