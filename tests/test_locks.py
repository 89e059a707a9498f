"""agents.locks: a lock is good only on the file its path names once it is held."""

import os
import threading

from agents.locks import run_lock


def test_a_lock_whose_file_was_removed_while_waiting_is_taken_again_on_the_new_file(tmp_path):
    """A run that failed to start removes its directory while holding the lock; a process that was waiting
    for that lock then held a removed file, and a third one could lock a new file at the same path."""
    path = tmp_path / "run" / ".lock"
    got = {}
    with run_lock(path, wait=False) as first:
        assert first is not None

        def waiter():
            with run_lock(path, wait=True) as fd:
                got["same_file"] = os.fstat(fd).st_ino == os.stat(path).st_ino
                with run_lock(path, wait=False) as third:
                    got["third"] = third

        thread = threading.Thread(target=waiter)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive()  # waiting for the first holder
        path.unlink()  # as a failed start's clean-up does, before it lets go
    thread.join(10)
    assert got == {"same_file": True, "third": None}  # the waiter holds the file the path names now
