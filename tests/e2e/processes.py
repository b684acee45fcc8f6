"""Which processes a command left running (Linux /proc), for the tests that kill or interrupt commands."""

from pathlib import Path


def children(pid):
    """Pids of the processes whose parent is ``pid``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError):
            pass  # ended while we looked
    return pids


def descendants(pid):
    """Pids of ``pid``'s children, their children, and so on."""
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def alive(pid):
    """Whether ``pid`` is a live process (a zombie is dead: it waits only to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
