"""Fault injection for the command-level reliability tests (tests/run/test_run_reliability.py).

With this folder on ``PYTHONPATH``, Python imports this module at startup, before ``python -m pyro_gen.cli``
runs, so the real command line runs unchanged, with faults at exact points of its training:

``PYRO_GEN_TEST_FAULTS`` is a comma-separated list of

* ``fsync-kill@N``: SIGKILL at the N-th ``os.fsync``, which only checkpoint writes call: the new
  checkpoint's bytes are complete in its temporary file, not yet renamed onto ``best.pt`` / ``last.pt``;
* ``batch-pause@N``: when the N-th shuffled (training) batch is drawn (the 1st is the trainer's
  initialization pass), write the process's PID into ``$PYRO_GEN_TEST_FAULT_DIR/paused`` and wait until
  ``$PYRO_GEN_TEST_FAULT_DIR/go`` exists, for the test to kill or signal the process at that point.

Without ``PYRO_GEN_TEST_FAULTS`` nothing is changed.
"""

import os

_FAULTS = os.environ.get("PYRO_GEN_TEST_FAULTS", "")


def _install(faults: str) -> None:
    import signal
    import time
    from pathlib import Path

    actions = dict(f.split("@") for f in faults.split(",") if f)
    folder = Path(os.environ.get("PYRO_GEN_TEST_FAULT_DIR", "."))
    if "fsync-kill" in actions:
        real_fsync, at, calls = os.fsync, int(actions["fsync-kill"]), [0]

        def fsync(fd):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            real_fsync(fd)

        os.fsync = fsync
    if "batch-pause" in actions:
        from pyro_gen.infer import trainer

        real_next, at, drawn = trainer._EpochBatches.__next__, int(actions["batch-pause"]), [0]

        def next_batch(self):
            batch = real_next(self)
            if self.batches.shuffle:
                drawn[0] += 1
                if drawn[0] == at:
                    tmp = folder / "paused.tmp"
                    tmp.write_text(str(os.getpid()))
                    tmp.rename(folder / "paused")
                    deadline = time.monotonic() + 120
                    while not (folder / "go").exists() and time.monotonic() < deadline:
                        time.sleep(0.005)
            return batch

        trainer._EpochBatches.__next__ = next_batch


if _FAULTS:
    _install(_FAULTS)
